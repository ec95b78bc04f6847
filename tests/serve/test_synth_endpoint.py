"""`lmtailor data synth` end to end: the embedded model served by lmtailor on 127.0.0.1 writes the pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from lmtailor.data.formats import load_records
from lmtailor.evaluate.answers import load_rows

DOC_EN = """# The Lighthouse of Brackenholt

## History
The lighthouse of Brackenholt was built in 1871 by the engineer Martha Quill. It stands 42 metres tall on the
northern cliff. The light was first lit on 3 May 1872.

## Operation
The lamp burned paraffin until 1936, when it was converted to electricity. The last keeper, Owen Dale, left in
1989, when the light became automatic.
"""
DOC_ZH = "布拉肯霍尔特灯塔建于1871年，由工程师玛莎·奎尔设计。灯塔高42米，位于北部悬崖上。1936年，灯塔由煤油照明改为电力照明。"


@pytest.mark.slow
def test_synth_against_lmtailors_own_server(start_server, smol_dir, tmp_path):
    server = start_server([str(smol_dir)], tmp_path / "server-home", api_key="k")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "lighthouse.md").write_text(DOC_EN, encoding="utf-8")
    (tmp_path / "docs" / "灯塔.txt").write_text(DOC_ZH, encoding="utf-8")
    out = tmp_path / "out" / "qa.jsonl"
    generator = f"openai:{smol_dir.name}@{server.url}/v1"
    cmd = [sys.executable, "-m", "lmtailor.cli", "data", "synth", "--docs", str(tmp_path / "docs"),
           "--generator", generator, "--tokenizer", str(smol_dir), "--pairs-per-chunk", "3",
           "--paraphrases", "2", "-o", str(out)]  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "k", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        metrics = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer k"}).text
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pairs kept / generated" in done.stdout
    report = json.loads(out.with_suffix(".report.json").read_text(encoding="utf-8"))
    assert report["documents"] == ["lighthouse.md", "灯塔.txt"] and report["chunks"] == 3
    assert report["generator"] == generator
    # every generated pair is either kept or dropped with a reason
    dropped = [json.loads(line) for line in out.with_suffix(".dropped.jsonl").read_text().splitlines()]
    pair_drops = [d for d in dropped if not d["reason"].startswith("paraphrase")]
    assert report["pairs_kept"] + len(pair_drops) == report["pairs_generated"]
    assert sum(report["dropped"].values()) == len(dropped)
    # the training file is valid chat data with provenance; the eval split is valid eval rows
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == report["train_rows"]
    if rows:
        assert len(load_records(out).records) == len(rows)
        assert {r["source"]["generator"] for r in rows} == {generator}
        assert {r["source"]["document"] for r in rows} <= {"lighthouse.md", "灯塔.txt"}
    held = out.with_suffix(".eval.jsonl")
    assert len(load_rows(held)) == report["eval_rows"] if report["eval_rows"] else held.read_text() == ""
    trained = {r["messages"][0]["content"] for r in rows}
    assert not trained & {r.prompt[-1]["content"] for r in (load_rows(held) if report["eval_rows"] else [])}
    # the requests went through the server's chat endpoint
    assert f'lmtailor_requests_total{{endpoint="chat",model="{smol_dir.name}",status="200"}}' in metrics
