"""run_eval and `lmtailor eval` on two tiny random models: outputs, documented keys, the generation cache."""

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest
from typer.testing import CliRunner

from lmtailor.errors import DataError, SpecError
from lmtailor.evaluate import answers, runner
from lmtailor.evaluate.spec import EvalSpec
from lmtailor.models.endpoint import Endpoint, parse_endpoint
from lmtailor.specs import build_spec

TOP_KEYS = {"schema", "created_at", "data", "metrics", "metrics_picked", "labels", "generation", "bootstrap",
            "baseline", "models", "output"}  # fmt: skip
MODEL_KEYS = {"name", "kind", "fingerprint", "generated", "cached", "seconds", "scores", "vs_baseline"}
COMPARISON_KEYS = {"test", "delta", "ci_low", "ci_high", "p_value", "significant", "better", "worse"}
SENTIMENT = [
    ("Great product, works well.", "positive"), ("Broke after a day.", "negative"), ("I love it!", "positive"),
    ("Terrible support.", "negative"), ("It is fine.", "neutral"), ("Would buy again.", "positive"),
    ("Waste of money.", "negative"), ("Nothing special.", "neutral"),
]  # fmt: skip


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sentiment_file(tmp_path: Path) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"Sentiment of: {t}"}], "reference": ref}
        for t, ref in SENTIMENT
    ]
    return _write(tmp_path / "sentiment.jsonl", rows)


def test_load_rows_reads_each_prompt_shape(tmp_path: Path):
    path = _write(tmp_path / "t.jsonl", [
        {"messages": [{"role": "user", "content": "Q1"}], "reference": 1974},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2"},
                      {"role": "assistant", "content": "A2"}]},
        {"instruction": "Q3", "input": "ctx", "output": "A3"},
    ])  # fmt: skip
    rows = answers.load_rows(path)
    assert [r.reference for r in rows] == ["1974", "A2", "A3"]
    assert rows[1].prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2"}]
    assert rows[2].prompt[-1] == {"role": "user", "content": "Q3\n\nctx"}
    bad = _write(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no reference"}]}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: no reference"):
        answers.load_rows(bad)


def test_endpoint_references():
    assert parse_endpoint("openai:my-model@http://127.0.0.1:8000/v1") == Endpoint(
        "my-model", "http://127.0.0.1:8000/v1"
    )
    assert parse_endpoint("openai:Qwen/Qwen2.5-7B") == Endpoint("Qwen/Qwen2.5-7B", None)
    assert parse_endpoint("smollm2-135m-instruct") is None


def test_spec_rejects_unknown_keys_and_metrics():
    with pytest.raises(SpecError, match="unknown key 'modles'"):
        build_spec(EvalSpec, {"modles": ["a"], "data": "t.jsonl"})
    with pytest.raises(SpecError, match="unknown metric"):
        build_spec(EvalSpec, {"models": ["a"], "data": "t.jsonl", "metrics": ["bleurt"]})
    with pytest.raises(SpecError, match="given twice"):
        build_spec(EvalSpec, {"models": ["a", "a"], "data": "t.jsonl"})


def test_two_tiny_models_write_all_outputs_and_reuse_the_cache(
    tiny_llama_dir, tiny_qwen2_dir, sentiment_file, tmp_path, lmtailor_home, monkeypatch
):
    out = tmp_path / "eval"
    spec = EvalSpec(models=[str(tiny_llama_dir), str(tiny_qwen2_dir)], data=str(sentiment_file),
                    output=str(out), max_new_tokens=4, bootstrap=200)  # fmt: skip
    result = runner.run_eval(spec, home=lmtailor_home, log=lambda s: None)

    assert {p.name for p in out.iterdir()} >= {
        "metrics.json",
        "report.md",
        "report.html",
        "predictions.jsonl",
    }
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(saved) == TOP_KEYS and saved["output"] == str(out) and saved["schema"] == "lmtailor.eval/1"
    assert saved["metrics"] == ["accuracy", "precision", "recall", "f1"] and saved["metrics_picked"]
    assert saved["labels"] == ["negative", "neutral", "positive"]
    base, other = saved["models"]
    assert set(base) >= MODEL_KEYS and base["name"] == saved["baseline"] == str(tiny_llama_dir)
    assert base["generated"] == 8 and base["cached"] == 0 and base["vs_baseline"] == {}
    for m in saved["models"]:
        for s in m["scores"].values():
            assert set(s) == {"value", "ci_low", "ci_high", "higher_is_better"}
            assert s["ci_low"] <= s["value"] <= s["ci_high"]
        conf = m["classification"]["confusion"]
        assert conf["columns"][-1] == "<unmatched>" and sum(map(sum, conf["matrix"])) == 8
    assert set(other["vs_baseline"]) == {"accuracy", "precision", "recall", "f1"}
    assert set(other["vs_baseline"]["accuracy"]) >= COMPARISON_KEYS
    assert other["vs_baseline"]["accuracy"]["test"].startswith("mcnemar")
    assert set(other["examples"]) == {"metric", "fixed", "broken"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") == 4 and "Confusion matrices" in html and "<script" not in html
    for svg in re.findall(r"<svg.*?</svg>", html, re.S):
        ElementTree.fromstring(svg)  # well-formed inline charts
    assert "| model | accuracy | precision | recall | f1 |" in (out / "report.md").read_text(encoding="utf-8")
    first = json.loads((out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert set(first["predictions"]) == {str(tiny_llama_dir), str(tiny_qwen2_dir)}
    assert result["models"][1]["scores"]["f1"] == other["scores"]["f1"]

    # re-scoring with other metrics through the CLI answers from the cache: generation must not run
    def no_generation(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr("lmtailor.evaluate.generate.generate", no_generation)
    out2 = tmp_path / "eval2"
    args = ["eval", "--model", str(tiny_llama_dir), "--model", str(tiny_qwen2_dir), "--data", str(sentiment_file),
            "--metrics", "exact_match,contains,chrf", "--max-new-tokens", "4", "--bootstrap", "200",
            "--output", str(out2), "--home", str(lmtailor_home)]  # fmt: skip
    from lmtailor.cli import app

    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "exact_match" in r.output and "(baseline)" in r.output and "report.html" in r.output
    again = json.loads((out2 / "metrics.json").read_text(encoding="utf-8"))
    assert [(m["cached"], m["generated"]) for m in again["models"]] == [(8, 0), (8, 0)]
    assert set(again["models"][1]["vs_baseline"]) == {"exact_match", "contains", "chrf"}


def test_cli_reports_a_bad_file_in_one_line(tmp_path):
    from lmtailor.cli import app

    # Past 80 columns (rich's width where the output is no terminal: a log, a pipe): a hard wrap would show.
    missing = tmp_path / ("a-folder-with-a-long-name-" * 3) / "missing.jsonl"
    r = CliRunner().invoke(app, ["eval", "--model", "x", "--data", str(missing)], env={"COLUMNS": "80"})
    assert r.exit_code == 1 and f"{missing}: file not found" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_evaluate_rows_for_a_training_callback(tiny_llama_dir, sentiment_file):
    import torch

    from lmtailor.models.loading import load_model, load_tokenizer

    rows = answers.load_rows(sentiment_file)
    model = load_model(str(tiny_llama_dir), dtype=torch.float32, device="cpu")
    model.train()
    values = runner.evaluate_rows(model, load_tokenizer(str(tiny_llama_dir)), rows, ["accuracy", "f1", "perplexity"],
                                  max_new_tokens=3)  # fmt: skip
    assert set(values) == {"accuracy", "f1", "perplexity"} and values["perplexity"] > 1
    assert model.training  # put back as it was


def test_endpoint_model_through_the_openai_client(tiny_llama_dir, tmp_path, lmtailor_home, monkeypatch):
    """The client path against a stdlib stub on 127.0.0.1 (the real-server test waits for `lmtailor serve`)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen = []

    class Stub(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, self.headers["Authorization"], body["max_tokens"]))
            answer = "Paris." if "France" in body["messages"][-1]["content"] else "no idea"
            reply = {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": answer}}]}  # fmt: skip
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    data = _write(tmp_path / "t.jsonl", [
        {"messages": [{"role": "user", "content": "Capital of France?"}], "reference": "Paris"},
        {"messages": [{"role": "user", "content": "Capital of Peru?"}], "reference": "Lima"},
    ])  # fmt: skip
    endpoint = f"openai:stub@http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        spec = EvalSpec(models=[str(tiny_llama_dir), endpoint], data=str(data), metrics=["contains", "perplexity"],
                        max_new_tokens=3, bootstrap=100, output=str(tmp_path / "out"))  # fmt: skip
        result = runner.run_eval(spec, home=lmtailor_home, log=lambda s: None)
    finally:
        server.shutdown()
    ep = result["models"][1]
    assert ep["kind"] == "openai" and ep["scores"]["contains"]["value"] == 0.5
    assert "perplexity" not in ep["scores"]  # needs local weights
    assert seen[0] == ("/v1/chat/completions", "Bearer sk-test", 3)
