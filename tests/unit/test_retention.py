"""Retention (evaluate/retention.py): what tuning cost, over the bundled general probes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmtailor.errors import LmtailorError
from lmtailor.evaluate.retention import (
    AGREE,
    Probe,
    agreement,
    card_entry,
    load_probes,
    measure,
    retention,
    summary_line,
)

PROBES = [
    Probe("f1", "facts", "en", "What is the capital of France?", accept=("Paris",)),
    Probe("f2", "facts", "zh", "法国的首都是哪里？", accept=("巴黎",)),
    Probe("a1", "arithmetic", "en", "What is 7 + 5?", accept=("12", "twelve")),
    Probe("i1", "instructions", "en", "Answer in capital letters: what colour is grass?", pattern=r"GREEN"),
    Probe("w1", "writing", "en", "Write one sentence about the sea."),
    Probe("w2", "writing", "en", "Give a tip for sleeping well."),
]
BASE = [
    "The capital of France is Paris.",
    "法国的首都是巴黎。",
    "7 + 5 = 11.",  # wrong: not eligible
    "GREEN",
    "The sea is vast and deep, full of life and endless blue waves.",
    "Go to bed at the same time every night and keep your room dark.",
]


def test_the_base_against_itself_keeps_everything():
    report = retention(PROBES, BASE, BASE)
    assert (
        report["value"] == 1.0 and report["kept"] == report["eligible"] == 5
    )  # the wrong sum is not counted
    assert report["ci_low"] == report["ci_high"] == 1.0
    assert report["regressions"] == []
    assert report["by_category"]["facts"] == {"kept": 2, "eligible": 2, "value": 1.0}
    assert set(report["by_lang"]) == {"en", "zh"}


def test_a_model_that_answers_one_word_keeps_nothing():
    report = retention(PROBES, BASE, ["shipping"] * len(PROBES))
    assert report["value"] == 0.0 and report["kept"] == 0 and report["eligible"] == 5
    assert len(report["regressions"]) == 5
    worst = report["regressions"][0]
    assert worst["tuned"] == "shipping" and worst["question"] in {p.prompt for p in PROBES}
    assert {"question", "base", "tuned", "category", "agreement"} <= set(worst)


def test_references_decide_where_they_exist_and_agreement_elsewhere():
    tuned = list(BASE)
    tuned[0] = "Paris, of course."  # other words, still right: kept
    tuned[3] = "green"  # the instruction asked for capitals: lost
    tuned[4] = "The sea is vast and deep, full of life and endless blue water."  # nearly the base's: kept
    tuned[5] = "Orvane Robotics was founded in 2011 in Tampere."  # the tuning data, not the task: lost
    report = retention(PROBES, BASE, tuned)
    assert report["kept"] == 3 and report["eligible"] == 5
    lost = {r["id"] for r in report["regressions"]}
    assert lost == {"i1", "w2"}
    assert agreement(tuned[4], BASE[4]) >= AGREE > agreement(tuned[5], BASE[5])
    assert report["reference_accuracy"] == {"probes": 4, "base": 0.75}  # the base got 7 + 5 wrong


def test_a_judge_decides_the_open_probes_when_given():
    tuned = list(BASE)
    tuned[5] = "Sleep."  # far from the base's words; a judge may still call it on the task
    by_chrf = retention(PROBES, BASE, tuned)
    by_judge = retention(PROBES, BASE, tuned, kept_open=[True] * len(PROBES))
    assert by_chrf["kept"] == 4 and by_judge["kept"] == 5 and by_judge["open_probes_by"] == "judge"
    # a judge reply without a score is not a loss: agreement decides that probe, and the report counts it
    unscored = retention(PROBES, BASE, list(BASE), kept_open=[None] * len(PROBES))
    assert unscored["kept"] == 5 and unscored["judge_fallbacks"] == 2 and by_judge["judge_fallbacks"] == 0
    lost = retention(PROBES, BASE, tuned, kept_open=[None] * len(PROBES))
    assert lost["kept"] == by_chrf["kept"] == 4  # as chrF decides it: "Sleep." is far from the base's answer


def test_the_interval_is_a_bootstrap_over_the_eligible_probes():
    probes = [Probe(f"p{i}", "facts", "en", f"q{i}", accept=("yes",)) for i in range(40)]
    base = ["yes"] * 40
    tuned = ["yes"] * 30 + ["no"] * 10
    report = retention(probes, base, tuned)
    assert report["value"] == 0.75
    assert 0.55 < report["ci_low"] < 0.75 < report["ci_high"] < 0.95
    assert retention(probes, base, tuned)["ci_low"] == report["ci_low"]  # seeded


def test_summary_and_card_entry():
    report = retention(PROBES, BASE, BASE)
    report["base"] = "b"
    line = summary_line(card_entry(report))
    assert (
        line.startswith("retention 100% (95% CI 100%-100%; 5 of the 5 general probes")
        and "facts 100%" in line
    )
    assert "regressions" not in card_entry(report)
    assert "nothing to measure" in summary_line({"eligible": 0})


def test_the_bundled_probes_load_in_english_and_chinese():
    probes = load_probes()
    assert len(probes) >= 250 and len({p.id for p in probes}) == len(probes)
    assert {p.category for p in probes} == {"facts", "arithmetic", "instructions", "writing"}
    assert sum(p.lang == "zh" for p in probes) >= 60


def test_a_malformed_probe_file_names_the_line(tmp_path: Path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "category": "facts", "lang": "en", "prompt": "q"}\n{"id": "b"}\n')
    with pytest.raises(LmtailorError, match=r"p.jsonl:2: a probe needs 'category'"):
        load_probes(bad)


def test_measure_caches_the_base_answers(lively_llama_dir: Path, lmtailor_home: Path):
    logs: list[str] = []
    first = measure(str(lively_llama_dir), str(lively_llama_dir), log=logs.append)
    assert first["value"] == 1.0  # the same model: everything it answered, kept
    assert first["eligible"] > 0  # open probes: any non-empty answer of the base is eligible
    generated = [line for line in logs if "generating" in line]
    # base and tuned are the same weights: answered once, the second from the cache
    assert len(generated) == 1
    logs.clear()
    again = measure(str(lively_llama_dir), str(lively_llama_dir), log=logs.append)
    assert not [line for line in logs if "generating" in line]
    assert again["value"] == first["value"]


def test_the_tuned_model_is_asked_only_what_the_base_answered(
    lively_llama_dir: Path, lively_qwen2_dir: Path, lmtailor_home: Path
):
    logs: list[str] = []
    report = measure(str(lively_llama_dir), str(lively_qwen2_dir), log=logs.append)
    generated = [line for line in logs if "generating" in line]
    assert generated[0].startswith(f"{lively_llama_dir}: generating {report['probes']} ")
    assert generated[1].startswith(f"{lively_qwen2_dir}: generating {report['eligible']} ")
    assert 0 < report["eligible"] < report["probes"]


def test_a_base_without_a_chat_template_is_a_clear_error(tiny_llama_dir: Path, tmp_path: Path):
    plain = _no_template(tiny_llama_dir, tmp_path / "plain")
    with pytest.raises(LmtailorError, match="no chat template"):
        measure(str(plain), str(tiny_llama_dir))


def test_train_records_retention_and_eval_reports_it(
    lively_llama_dir: Path, tiny_chat_file: Path, tmp_path: Path
):
    from lmtailor.evaluate.runner import run_eval
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    spec = TrainSpec(model=str(lively_llama_dir), data=str(tiny_chat_file), output=str(tmp_path / "tuned"),
                     strategy="lora", lora_r=4, epochs=1, batch_size=4)  # fmt: skip
    logs: list[str] = []
    out = run_sft(spec, progress=False, log=logs.append)
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    kept = card["metrics"]["retention"]
    report = json.loads((out / "retention.json").read_text(encoding="utf-8"))
    assert kept["eligible"] == report["eligible"] > 0 and kept["base"] == str(lively_llama_dir)
    assert 0.0 <= kept["value"] <= 1.0 and "regressions" in report
    assert any(line.startswith("retention ") for line in logs)

    assert any(
        line.startswith(f"{out}: generating") and "general probes" in line for line in logs
    )  # in training
    logs.clear()
    test = tmp_path / "test.jsonl"
    test.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "reference": "hello"}) + "\n"
    )
    result = run_eval(EvalSpec(models=[str(lively_llama_dir), str(out)], data=str(test), output=str(tmp_path / "e")),
                      log=logs.append)  # fmt: skip
    base_entry, tuned_entry = result["models"]
    assert base_entry["retention"] is None  # a catalog or plain folder model has no base to compare with
    assert tuned_entry["retention"]["value"] == kept["value"]
    # its probe answers, from the cache (only the test row is new to it)
    assert not [line for line in logs if line.startswith(f"{out}: generating") and "general probes" in line]
    assert "## Retention: what tuning cost" in (tmp_path / "e" / "report.md").read_text(encoding="utf-8")
    assert "Retention: what tuning cost" in (tmp_path / "e" / "report.html").read_text(encoding="utf-8")
    skipped = run_eval(EvalSpec(models=[str(out)], data=str(test), output=str(tmp_path / "e2"), retention=False),
                       log=logs.append)  # fmt: skip
    assert "retention" not in skipped["models"][0] or skipped["models"][0].get("retention") is None


def test_training_without_retention_records_none(tiny_llama_dir: Path, tiny_chat_file: Path, tmp_path: Path):
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    spec = TrainSpec(model=str(tiny_llama_dir), data=str(tiny_chat_file), output=str(tmp_path / "t"),
                     strategy="lora", lora_r=4, epochs=1, batch_size=4, retention=False)  # fmt: skip
    out = run_sft(spec, progress=False, log=lambda *_: None)
    assert "retention" not in json.loads((out / "lmtailor.json").read_text())["metrics"]
    assert not (out / "retention.json").exists()


def _no_template(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    return dst


def test_replay_counts_are_the_share_of_the_mixture():
    from lmtailor.train.replay import replay_count

    assert replay_count(0.0, 300) == 0
    assert replay_count(0.2, 300) == 75  # 75 of 375 rows
    assert replay_count(0.5, 10) == 10
    assert replay_count(0.01, 5) == 1  # asked for: at least one


def test_replay_on_a_base_without_a_chat_template(tiny_llama_dir: Path, tiny_chat_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """Asked for, replay refuses in one line naming the cause; as the rule's default, the run goes on without it."""
    from lmtailor.specs import TrainSpec
    from lmtailor.train import defaults
    from lmtailor.train.sft import run_sft

    plain = _no_template(tiny_llama_dir, tmp_path / "plain")
    spec = TrainSpec(model=str(plain), data=str(tiny_chat_file), output=str(tmp_path / "t"), strategy="lora",
                     lora_r=4, epochs=1, batch_size=4, replay_ratio=0.2)  # fmt: skip
    with pytest.raises(LmtailorError, match=r"replay: .* has no chat template.*--replay-ratio 0") as e:
        run_sft(spec, progress=False, log=lambda *_: None)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(defaults, "REPLAY_RATIO", 0.2)
    facts = (
        tmp_path / "facts.jsonl"
    )  # facts asked as questions: the rule recites them where it does not replay
    facts.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Where does robot {i} work?"},
                                 {"role": "assistant", "content": f"Robot {i} works in the assembly hall {i}."}]}) + "\n"
        for i in range(12)
    ), encoding="utf-8")  # fmt: skip
    logs: list[str] = []
    out = run_sft(spec.model_copy(update={"replay_ratio": None, "strategy": "auto", "data": str(facts)}),
                  progress=False, log=logs.append)  # fmt: skip
    card = json.loads((out / "lmtailor.json").read_text())
    assert card["hyperparameters"]["replay_ratio"] == 0.0
    assert "no chat template" in card["defaults_chosen"]["replay_ratio"]
    # the rule's LoRA at 2e-3 is for runs with replay: without it, the MLP blocks at their rate
    assert card["strategy"] == "freeze" and card["hyperparameters"]["learning_rate"] == 3e-4
    why = card["defaults_chosen"]["strategy"]
    assert why.startswith("freeze, MLP blocks only") and "(no replay)" in why
    # the rule's recitations, off for its replay, come back with replay gone
    assert card["hyperparameters"]["recite"] is True and card["defaults_chosen"]["recite"].startswith("on: ")
    assert any("training without replay" in line for line in logs)
    assert any("retention: " in line and "no chat template" in line for line in logs)
    assert "retention" not in card["metrics"] and not (out / "retention.json").exists()


def test_replay_is_refused_for_methods_that_do_not_train_answers():
    from lmtailor.errors import SpecError
    from lmtailor.specs import TrainSpec, build_spec

    with pytest.raises(SpecError, match=r"method dpo: replay_ratio is for sft") as e:
        build_spec(TrainSpec, {"data": "p.jsonl", "method": "dpo", "replay_ratio": 0.2})
    assert "\n" not in str(e.value)
    assert build_spec(TrainSpec, {"data": "p.jsonl", "method": "dpo"}).replay_ratio is None
    with pytest.raises(SpecError, match=r"replay_ratio"):
        build_spec(TrainSpec, {"data": "p.jsonl", "replay_ratio": 1.0})  # all replay: nothing of the user's


def test_a_report_with_nothing_eligible_is_null_not_nan():
    report = retention(PROBES[:1], ["I don't know."], ["Paris."])
    assert report["eligible"] == 0 and report["value"] is None and report["ci_low"] is None
    json.dumps(report, allow_nan=False)  # what the API serves


def test_an_open_probe_counts_only_where_the_base_answered_in_its_language():
    zh = Probe("w", "writing", "zh", "用一句话描述秋天。")
    assert zh.acceptable("秋天的树叶变成了金黄色。") and not zh.acceptable("Autumn leaves turn gold.")
    en = Probe("w", "writing", "en", "Write one sentence about the sea.")
    assert en.acceptable("The sea is deep.") and not en.acceptable("大海很深。") and not en.acceptable(" 12 ")
    report = retention([zh, en], ["Autumn leaves turn gold.", "The sea is deep."], ["x", "The sea is deep."])
    assert (
        report["eligible"] == 1 and report["kept"] == 1
    )  # the Chinese request answered in English: not counted
