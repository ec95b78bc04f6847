"""`lmtailor eval` with an endpoint model: lmtailor's own server on 127.0.0.1, called through the openai SDK."""

from __future__ import annotations

import json

import httpx


def test_eval_scores_a_model_served_by_lmtailor(start_server, lively_llama_dir, tmp_path, monkeypatch):
    from lmtailor.evaluate import runner
    from lmtailor.evaluate.spec import EvalSpec

    server = start_server([str(lively_llama_dir)], tmp_path / "server-home", api_key="k")
    rows = [{"messages": [{"role": "user", "content": q}], "reference": ref}
            for q, ref in [("Capital of France?", "Paris"), ("Capital of Peru?", "Lima"), ("2 + 2?", "4")]]  # fmt: skip
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    endpoint = f"openai:{lively_llama_dir.name}@{server.url}/v1"
    try:
        spec = EvalSpec(models=[str(lively_llama_dir), endpoint], data=str(data), metrics=["contains", "chrf"],
                        max_new_tokens=8, bootstrap=100, output=str(tmp_path / "out"))  # fmt: skip
        result = runner.run_eval(spec, home=tmp_path / "home", log=lambda s: None)
        direct = [
            server.client(api_key="k")
            .chat.completions.create(
                model=lively_llama_dir.name, messages=r["messages"], max_tokens=8, temperature=0
            )
            .choices[0]
            .message.content.strip()
            for r in rows
        ]
        metrics = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer k"}).text
    finally:
        server.stop()
    served = result["models"][1]
    assert served["kind"] == "openai" and set(served["scores"]) == {"contains", "chrf"}
    predictions = [
        json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [p["predictions"][endpoint]["answer"] for p in predictions] == direct
    assert (
        f'lmtailor_requests_total{{endpoint="chat",model="{lively_llama_dir.name}",status="200"}} 6.0'
        in metrics
    )
