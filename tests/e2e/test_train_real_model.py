"""End to end on the real 135M model through the `lmtailor` command line: a few steps, then the output
folder loads with plain transformers and generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "src" / "lmtailor" / "quickstart" / "data"


def lmtailor(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMTAILOR_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "lmtailor.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )


def test_train_lora_on_real_model_then_load_and_generate(smol_dir: Path, tmp_path: Path):
    rows = QUICKSTART.joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tuned"
    r = lmtailor("train", "--model", str(smol_dir), "--data", str(data), "--output", str(out),
                 "--strategy", "lora", "--epochs", "1", "--batch-size", "8", home=tmp_path / "home")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tuned model:" in r.stdout

    card = json.loads((out / "lmtailor.json").read_text())
    assert card["strategy"] == "lora" and card["method"] == "sft"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert card["metrics"]["steps"] == max(r["step"] for r in logged) >= 2  # 16 rows packed ~8 a row
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "loss.png").stat().st_size > 1000
    assert not (out / "checkpoints").exists()  # pruned after a finished run

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    enc = tok.apply_chat_template([{"role": "user", "content": "Who founded Orvane Robotics?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.strip()) > 0

    base = AutoModelForCausalLM.from_pretrained(smol_dir)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert changed, "merged LoRA weights equal the base: nothing was learned"


def test_bad_data_is_one_line_not_a_traceback(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n', encoding="utf-8")
    r = lmtailor("train", "--data", str(bad), "--output", str(tmp_path / "o"), home=tmp_path / "home")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{bad}:1:" in r.stderr and f"{bad}:2:" in r.stderr
