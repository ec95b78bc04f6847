"""Metric judge with an endpoint judge: lmtailor's own server on 127.0.0.1, asked through the openai SDK."""

from __future__ import annotations

import json
import re

import httpx
import pytest

QA = [("Capital of France?", "Paris"), ("Capital of Peru?", "Lima"), ("2 + 2?", "4")]
JUDGE_TOP_KEYS = {"model", "kind", "fingerprint", "rubric", "scale", "max_tokens", "temperature", "asked", "cached",
                  "seconds", "prompt_file", "judgements_file", "unparsed_excluded"}  # fmt: skip


def _chat_requests(server, model: str) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer k"}).text
    m = re.search(
        rf'lmtailor_requests_total{{endpoint="chat",model="{re.escape(model)}",status="200"}} (\S+)', text
    )
    return float(m[1]) if m else 0.0


def test_judge_served_by_lmtailor(start_server, lively_llama_dir, tiny_llama_dir, tmp_path, monkeypatch):
    from lmtailor.evaluate import judge, runner
    from lmtailor.evaluate.spec import EvalSpec

    server = start_server([str(lively_llama_dir)], tmp_path / "server-home", api_key="k")
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "reference": ref}) + "\n"
                            for q, ref in QA), encoding="utf-8")  # fmt: skip
    monkeypatch.setenv("JUDGE_KEY", "k")  # the server refuses any other key
    name = lively_llama_dir.name
    models = [str(lively_llama_dir), str(tiny_llama_dir)]

    def spec(out: str) -> EvalSpec:
        return EvalSpec(models=models, data=str(data), metrics=["contains", "judge"], api_key_env="JUDGE_KEY",
                        judge_model=f"openai:{name}@{server.url}/v1", max_new_tokens=8, bootstrap=100,
                        output=str(tmp_path / out))  # fmt: skip

    try:
        result = runner.run_eval(spec("out"), home=tmp_path / "home", log=lambda s: None)
        asked = _chat_requests(server, name)
        again = runner.run_eval(spec("again"), home=tmp_path / "home", log=lambda s: None)
        asked_again = _chat_requests(server, name)
        lines = [
            json.loads(x) for x in (tmp_path / "out" / "judgements.jsonl").read_text("utf-8").splitlines()
        ]
        client = server.client(api_key="k")
        direct = [
            client.chat.completions.create(
                model=name,
                messages=[{"role": "user", "content": j["prompt"]}],
                max_tokens=judge.JUDGE_MAX_TOKENS,
                temperature=0,
            )
            .choices[0]
            .message.content.strip()
            for j in lines
        ]
    finally:
        server.stop()

    out = tmp_path / "out"
    saved = json.loads((out / "metrics.json").read_text("utf-8"))
    assert saved == json.loads(json.dumps(result)) and set(saved["judge"]) == JUDGE_TOP_KEYS
    assert saved["judge"]["kind"] == "openai" and saved["judge"]["rubric"] == "default"
    assert (out / "judge_prompt.txt").read_text("utf-8") == judge.fill(
        judge.TEMPLATE, rubric=judge.DEFAULT_RUBRIC
    )

    # one judgement per model and row: the prompt built from that model's answer, the server's raw reply
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    assert [(j["model"], j["row"]) for j in lines] == [(m, i) for m in models for i in range(len(QA))]
    for j in lines:
        (question, reference), answer = (
            QA[j["row"]],
            predictions[j["row"]]["predictions"][j["model"]]["answer"],
        )
        assert j["prompt"] == judge.fill(judge.TEMPLATE, rubric=judge.DEFAULT_RUBRIC, question=question,
                                         reference=reference, answer=answer)  # fmt: skip
    assert [j["reply"] for j in lines] == direct
    assert [j["score"] for j in lines] == [judge.parse_reply(r).score for r in direct]

    # identical judge prompts are asked once; the second run asks nothing
    assert (
        asked == saved["judge"]["asked"] == len({j["prompt"] for j in lines})
        and saved["judge"]["cached"] == 0
    )
    assert asked_again == asked and (again["judge"]["asked"], again["judge"]["cached"]) == (0, 2 * len(QA))

    for entry in saved["models"]:
        mine = [j for j in lines if j["model"] == entry["name"]]
        unparsed = [j["row"] for j in mine if judge.parse_reply(j["reply"]).score is None]
        assert entry["judge"]["unparsed_rows"] == unparsed == [j["row"] for j in mine if j["score"] is None]
        assert (entry["judge"]["unparsed"], entry["judge"]["parsed"]) == (
            len(unparsed),
            len(QA) - len(unparsed),
        )
        norm = [(j["score"] - 1) / 4 for j in mine if j["score"] is not None]
        value = entry["scores"]["judge"]["value"]
        assert value == (pytest.approx(sum(norm) / len(norm)) if norm else None)
        assert [p["predictions"][entry["name"]]["scores"]["judge"] for p in predictions] == [
            None if j["score"] is None else (j["score"] - 1) / 4 for j in mine
        ]
    base, other = saved["models"]
    both = base["scores"]["judge"]["value"] is not None and other["scores"]["judge"]["value"] is not None
    assert ("judge" in other["vs_baseline"]) == both and "contains" in other["vs_baseline"]
