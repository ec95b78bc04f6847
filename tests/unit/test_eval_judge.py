"""Metric judge: the reply parser on fixed replies, the normalised mean and unparsed count, the spec and CLI, and a
run with a local judge model (the endpoint judge is tested against lmtailor's server in tests/serve/)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lmtailor.errors import SpecError
from lmtailor.evaluate import judge, runner, stats
from lmtailor.evaluate.judge import Verdict, parse_reply
from lmtailor.evaluate.spec import EvalSpec
from lmtailor.specs import TrainSpec, build_spec

ROWS = [("What is the capital of France?", "Paris"), ("How many legs does a spider have?", "Eight"),
        ("中国的首都是哪里？", "北京")]  # fmt: skip
REPLIES = [
    ('{"score": 4, "reason": "Close to the reference."}', Verdict(4.0, "Close to the reference.", "json")),
    ('Sure. Here is my grading: {"reason": "Says Paris.", "score": 5} Hope it helps!', Verdict(5.0, "Says Paris.", "json")),
    ('```json\n{"score": "3", "reason": "Half right"}\n```', Verdict(3.0, "Half right", "json")),
    ('{"evaluation": {"Score": 2, "Explanation": "Mostly wrong"}}', Verdict(2.0, "Mostly wrong", "json")),
    ('<think>Maybe a 2? No: score 5.</think>\n{"score": 4}', Verdict(4.0, None, "json")),
    ('{"score": 7, "reason": "great"}', Verdict(None, "great", "json")),  # the JSON decides: out of range
    ('{"score": 0}', Verdict(None, None, "json")),
    ('{"score": true}', Verdict(None, None, "json")),
    ("Score: 4", Verdict(4.0, None, "keyword")),
    ("**Score:** 3/5\nThe answer misses the second part.", Verdict(3.0, None, "keyword")),
    ("Score (1-5): 2", Verdict(2.0, None, "keyword")),
    ("I would give it a rating of 4 out of 5.", Verdict(4.0, None, "keyword")),
    ("{'score': 4, 'reason': 'python dict'}", Verdict(4.0, None, "keyword")),
    ("Final score = 3.5", Verdict(3.5, None, "keyword")),
    ("评分：5", Verdict(5.0, None, "keyword")),
    ("这个回答得分为4分，因为缺少细节。", Verdict(4.0, None, "keyword")),
    ("满分5分，我给3分。", Verdict(3.0, None, "keyword")),
    ("Score: 8/10", Verdict(None, None, "keyword")),  # another scale is not a 1-5 score
    ("Score: 9", Verdict(None, None, "keyword")),
    ("4/5", Verdict(4.0, None, "fraction")),
    ("The answer is right: 5 out of 5.", Verdict(5.0, None, "fraction")),
    ("I give it **3**.", Verdict(3.0, None, "bold")),
    ("**6**", Verdict(None, None, "bold")),
    ("4", Verdict(4.0, None, "lone")),
    ("I'd say 2.", Verdict(2.0, None, "lone")),
    ("0", Verdict(None, None, "lone")),
    ("1997", Verdict(None, None, "lone")),
    ("The answer has 3 parts and 2 errors.", Verdict(None)),  # two numbers: no way to tell
    ("8/10", Verdict(None)),
    ("no idea", Verdict(None)),
    ("", Verdict(None)),
    # a judge that repeats the format line of the prompt gives no score
    ('{"score": <a whole number from 1 to 5>, "reason": "<one sentence>"}', Verdict(None)),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "expected"), REPLIES)
def test_parse_reply(reply, expected):
    assert parse_reply(reply) == expected


def test_prompt_slots_are_filled_once_and_the_question_is_the_last_user_turn():
    rubric = 'Say {answer} literally; JSON like {"a": 1} stays.'
    template = judge.fill(judge.TEMPLATE, rubric=rubric)
    assert "Say {answer} literally" in template and '{"a": 1}' in template and "{question}" in template
    row = runner.EvalRow(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q {reference}?"}], "R"
    )
    [message] = judge.judge_prompt(rubric, row, "A {question}")
    text = message["content"]
    assert message["role"] == "user" and "Be brief." not in text
    assert "Question:\nQ {reference}?\n" in text and "Reference answer:\nR\n" in text
    assert "Answer to grade:\nA {question}\n" in text and "Say {answer} literally" in text


def test_normalised_mean_leaves_unparsed_rows_out():
    score = judge.judge_score([5, None, 1, 3.5, None, 4])
    assert score.name == "judge" and score.higher_is_better
    np.testing.assert_allclose(score.per_example, [1.0, np.nan, 0.0, 0.625, np.nan, 0.75])
    assert score.value == pytest.approx((1.0 + 0.0 + 0.625 + 0.75) / 4)
    assert score.details == {
        "raw_mean": pytest.approx(13.5 / 4),
        "parsed": 4,
        "unparsed": 2,
        "unparsed_rows": [1, 4],
    }
    assert math.isnan(score.on(np.array([1, 4, 4])))  # a resample without a parsed row has no mean
    assert score.on(np.array([0, 1, 2])) == 0.5
    low, high = stats.bootstrap_ci(score, 200, 0)
    assert 0.0 <= low <= score.value <= high <= 1.0

    other = judge.judge_score([None, 4, 1, 3.5, 5, 4])  # row 0 parsed only in the first, row 1 only here
    cmp = stats.compare(score, other, 200, 0)
    assert cmp["delta"] == pytest.approx(other.value - score.value) and 0.0 < cmp["p_value"] <= 1.0
    assert cmp["ci_low"] <= cmp["delta"] <= cmp["ci_high"]

    none = judge.judge_score([None, None])
    assert math.isnan(none.value) and none.details["raw_mean"] is None and none.details["unparsed"] == 2
    assert all(math.isnan(v) for v in stats.bootstrap_ci(none, 100, 0))


def test_judge_needs_a_judge_model_and_is_not_for_training():
    with pytest.raises(SpecError, match="metric judge needs a judge model: --judge-model"):
        build_spec(EvalSpec, {"models": ["a"], "data": "t.jsonl", "metrics": ["contains", "judge"]})
    spec = build_spec(
        EvalSpec, {"models": ["a"], "data": "t.jsonl", "metrics": ["judge"], "judge_model": " j "}
    )
    assert spec.judge_model == "j" and spec.judge_rubric is None
    with pytest.raises(SpecError, match="judge needs a judge model"):
        build_spec(TrainSpec, {"model": "a", "data": "t.jsonl", "eval_metrics": ["judge"]})


def test_cli_names_the_missing_flag_and_file(tmp_path):
    from lmtailor.cli import app

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Q"}], "reference": "R"}) + "\n")
    r = CliRunner().invoke(app, ["eval", "-m", "x", "--data", str(data), "--metrics", "judge"])
    assert r.exit_code == 1 and "--judge-model" in r.output
    r = CliRunner().invoke(app, ["eval", "-m", "x", "--data", str(data), "--metrics", "judge", "--judge-model", "x",
                                 "--judge-rubric", f"@{tmp_path / 'missing.txt'}"])  # fmt: skip
    assert r.exit_code == 1 and "--judge-rubric: file not found" in r.output


def _qa_file(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": q}], "reference": ref} for q, ref in ROWS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_local_judge_model(lively_llama_dir, tmp_path, lmtailor_home, monkeypatch):
    """A local folder as the judge: never picked without --metrics judge; its real replies saved, parsed and
    counted; the rubric from @file; a second run answers the judge from the cache."""
    from lmtailor.cli import app
    from lmtailor.evaluate.generate import generate
    from lmtailor.models.loading import load_model, load_tokenizer

    data = _qa_file(tmp_path / "qa.jsonl")
    logs: list[str] = []
    picked = runner.run_eval(
        EvalSpec(models=[str(lively_llama_dir)], data=str(data), judge_model=str(lively_llama_dir),
                 max_new_tokens=8, bootstrap=100, output=str(tmp_path / "picked")),
        home=lmtailor_home, log=logs.append,
    )  # fmt: skip
    assert "judge" not in picked["metrics"] and "judge" not in picked
    assert not (tmp_path / "picked" / "judgements.jsonl").exists()
    assert any("metric judge is not asked for" in line for line in logs)

    rubric = "5 if the answer names the same thing as the reference, 1 if not; {braces} kept."
    (tmp_path / "rubric.txt").write_text(rubric, encoding="utf-8")
    out = tmp_path / "judged"
    args = ["eval", "-m", str(lively_llama_dir), "--data", str(data), "--metrics", "contains,judge",
            "--judge-model", str(lively_llama_dir), "--judge-rubric", f"@{tmp_path / 'rubric.txt'}",
            "--max-new-tokens", "8", "--bootstrap", "100", "--home", str(lmtailor_home)]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--output", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output

    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["metrics"] == ["contains", "judge"]
    top = saved["judge"]
    assert top["model"] == str(lively_llama_dir) and top["kind"] == "local" and top["rubric"] == "custom"
    assert (top["asked"], top["cached"], top["scale"], top["max_tokens"]) == (
        3,
        0,
        [1, 5],
        judge.JUDGE_MAX_TOKENS,
    )
    template = (out / "judge_prompt.txt").read_text(encoding="utf-8")
    assert template == judge.fill(judge.TEMPLATE, rubric=rubric) and "{answer}" in template

    lines = [json.loads(line) for line in (out / "judgements.jsonl").read_text(encoding="utf-8").splitlines()]
    predictions = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    answers = [p["predictions"][str(lively_llama_dir)]["answer"] for p in predictions]
    assert [(j["model"], j["row"]) for j in lines] == [(str(lively_llama_dir), i) for i in range(3)]
    for j, (question, reference), answer in zip(lines, ROWS, answers, strict=True):
        assert j["prompt"] == judge.fill(judge.TEMPLATE, rubric=rubric, question=question, reference=reference,
                                         answer=answer)  # fmt: skip
    tok, model = load_tokenizer(str(lively_llama_dir)), load_model(str(lively_llama_dir))
    direct = generate(model, tok, [[{"role": "user", "content": j["prompt"]}] for j in lines],
                      max_new_tokens=judge.JUDGE_MAX_TOKENS)  # fmt: skip
    assert [j["reply"] for j in lines] == direct
    assert [j["score"] for j in lines] == [parse_reply(reply).score for reply in direct]

    entry = saved["models"][0]
    unparsed_rows = [i for i, reply in enumerate(direct) if parse_reply(reply).score is None]
    assert (
        entry["judge"]["unparsed"] == len(unparsed_rows) and entry["judge"]["unparsed_rows"] == unparsed_rows
    )
    assert entry["judge"]["parsed"] == 3 - len(unparsed_rows)
    parsed = [(s - 1) / 4 for s in (j["score"] for j in lines) if s is not None]
    assert entry["scores"]["judge"]["value"] == (pytest.approx(sum(parsed) / len(parsed)) if parsed else None)
    assert [p["predictions"][str(lively_llama_dir)]["scores"]["judge"] for p in predictions] == [
        None if j["score"] is None else pytest.approx((j["score"] - 1) / 4) for j in lines
    ]
    assert "judge:" in (out / "report.md").read_text(encoding="utf-8")

    def no_generation(*a, **kw):
        raise AssertionError("generated again")

    monkeypatch.setattr("lmtailor.evaluate.generate.generate", no_generation)
    r = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "again")], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "again" / "metrics.json").read_text(encoding="utf-8"))
    assert (again["judge"]["asked"], again["judge"]["cached"]) == (0, 3)
    assert (tmp_path / "again" / "judgements.jsonl").read_text() == (out / "judgements.jsonl").read_text()
