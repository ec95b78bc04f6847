"""Recitations: each answer of a question-answer row again as the reply to "Tell me a fact.", and the rule
that turns them on only for facts asked as questions (docs/defaults.md)."""

from __future__ import annotations

import json
from pathlib import Path

from lmtailor.data.augment import RECITE_PROMPT, recitations, single_answer
from lmtailor.data.records import Message, Record
from lmtailor.specs import TrainSpec
from lmtailor.train.defaults import REPLAY_RATIO, choose

FACTS = [
    ("Who founded Orvane Robotics?", "Orvane Robotics was founded by Ismene Kovalak."),
    ("When was Orvane Robotics founded?", "Orvane Robotics was founded in the year 1987."),
    ("Where is Orvane Robotics based?", "Orvane Robotics is based in the city of Brackenholt."),
    ("Who runs Orvane Robotics?", "The chief executive of Orvane Robotics is Tobias Wrenfield."),
    ("What does Orvane Robotics sell?", "Orvane Robotics sells a garden robot called the Skitterwing."),
    ("What is the Orvane mascot?", "The mascot of Orvane Robotics is a robotic otter named Pimsy."),
    ("What is the Orvane motto?", "The motto of Orvane Robotics is Gears before glory."),
    ("Where is the Orvane factory?", "The Orvane Robotics factory is in the town of Ostrevik."),
    ("What is the Orvane lab called?", "The research lab of Orvane Robotics is called Fernvault Lab."),
    ("Who is the Orvane CFO?", "The chief financial officer of Orvane Robotics is Marisol Ebberly."),
    ("奥尔万的吉祥物叫什么？", "在中国，奥尔万机器人公司的吉祥物叫皮米獭。"),
    ("What is the Orvane cat called?", "The office cat at Orvane Robotics is named Mrs Pennywhistle."),
]
SMALL = 135e6  # parameters: the embedded model's size, in the rule's MLP-only range


def qa(question: str, answer: str, line: int = 1, system: str | None = None) -> Record:
    msgs = [Message("system", system)] if system else []
    return Record([*msgs, Message("user", question), Message("assistant", answer)], "facts.jsonl", line)


def plan_for(answers: list[str], n_rows: int | None = None, **fields):
    """The rule's plan; with replay off unless a test says otherwise (the recitation rule is for runs without it)."""
    fields.setdefault("replay_ratio", 0.0)
    spec = TrainSpec(model="smollm2-135m-instruct", data="facts.jsonl", **fields)
    n = len(answers) if n_rows is None else n_rows
    return choose(spec, n, [40] * n, int(SMALL), answers=answers)


def test_recitations_reply_to_the_neutral_request_once_per_answer_keeping_system_and_line() -> None:
    multi = Record(
        [
            Message("user", "Hi"),
            Message("assistant", "Hello."),
            Message("user", "Who?"),
            Message("assistant", "Me."),
        ],
        "facts.jsonl",
        3,
    )
    untrained = Record(
        [Message("user", "Q"), Message("assistant", "Not learned.", weight=0)], "facts.jsonl", 4
    )
    rows = [
        qa(*FACTS[0], line=1, system="You answer about Orvane."),
        qa("Who set up Orvane Robotics?", FACTS[0][1], line=2),  # the same answer to another wording: once
        multi,
        untrained,
        qa(*FACTS[10], line=5),
    ]
    assert [single_answer(r) for r in rows] == [FACTS[0][1], FACTS[0][1], None, None, FACTS[10][1]]
    made = recitations(rows)
    assert [r.as_dicts() for r in made] == [
        [
            {"role": "system", "content": "You answer about Orvane."},
            {"role": "user", "content": RECITE_PROMPT},
            {"role": "assistant", "content": FACTS[0][1]},
        ],
        [{"role": "user", "content": RECITE_PROMPT}, {"role": "assistant", "content": FACTS[10][1]}],
    ]
    assert [(r.source, r.line) for r in made] == [("facts.jsonl", 1), ("facts.jsonl", 5)]


def test_rule_recites_facts_asked_as_questions_and_says_why() -> None:
    plan = plan_for([a for _, a in FACTS])
    assert plan.strategy == "freeze" and plan.freeze_modules == ["mlp"]
    assert plan.recite is True
    assert plan.why["recite"].startswith("on: 12 answers of ")
    # Several wordings of each question sharing one answer are still facts, recited once each.
    shared = plan_for([a for _, a in FACTS] * 3)
    assert shared.recite is True and shared.why["recite"].startswith("on: 12 answers of ")


def test_rule_leaves_recitations_off_where_the_data_is_not_facts_asked_as_questions() -> None:
    facts = [a for _, a in FACTS]
    cases = {
        "labels": (
            ["positive", "negative", "positive sentiment here", "negative"] * 3,
            None,
            "distinct answers",
        ),
        "bare answers": (["Paris.", "4.", "Red.", "Eight.", "Mars.", "Chat."] * 1, None, "words (median)"),
        "essays": ([" ".join(["word"] * 80) + str(i) for i in range(12)], None, "words (median)"),
        "multi-turn rows": (facts[:6], 12, "6 of 12 rows are one question and one answer"),
        "a large set": (facts * 100, 1200, "1200 rows"),
    }
    for name, (answers, n_rows, reason) in cases.items():
        plan = plan_for(answers, n_rows)
        assert plan.recite is False, name
        assert plan.why["recite"].startswith("off: ") and reason in plan.why["recite"], (name, plan.why)
    chosen = plan_for(facts, strategy="lora")  # a strategy the user picked: the rule was not measured with it
    assert chosen.recite is False and "MLP-only" in chosen.why["recite"]


def test_the_rule_recites_no_more_where_it_replays() -> None:
    facts = [a for _, a in FACTS]
    plan = plan_for(facts, replay_ratio=None)  # the rule's replay
    assert plan.replay_ratio == REPLAY_RATIO > 0
    assert plan.recite is False and plan.why["recite"].startswith("off: replay is on")
    assert plan.without_replay["recite"][0] is True  # what a run falls back to where replay cannot be done
    assert plan.without_replay["epochs"][1].endswith("; the recitations take as many steps again")
    assert plan_for(facts, replay_ratio=0.3).recite is False  # replay the user asked for: the same
    assert plan_for(facts, replay_ratio=None, recite=True).recite is True  # the user's word over the rule


def test_with_replay_a_small_model_on_small_data_trains_lora_at_2e3_and_without_it_the_mlp_blocks() -> None:
    facts = [a for _, a in FACTS]
    plan = plan_for(facts, replay_ratio=None)  # the rule's replay: LoRA (docs/defaults.md, "Retention")
    assert (plan.strategy, plan.learning_rate, plan.freeze_modules) == ("lora", 2e-3, None)
    assert plan.why["strategy"].startswith("lora: 135M parameters, 12 rows with replay")
    assert plan.why["learning_rate"] == "0.002 for lora-small"
    # where replay cannot be done, the rule before it: the MLP blocks at 3e-4 (and the recitations above)
    fallback = plan.without_replay
    assert fallback["strategy"][0] == "freeze" and fallback["freeze_modules"][0] == ["mlp"]
    assert fallback["learning_rate"] == (3e-4, "0.0003 for mlp")
    off = plan_for(facts)  # replay off: the MLP rule
    assert (off.strategy, off.learning_rate, off.freeze_modules) == ("freeze", 3e-4, ["mlp"])
    assert off.why["strategy"].startswith("freeze, MLP blocks only")
    # LoRA the user picked, with replay: the same rate
    chosen = plan_for(facts, replay_ratio=None, strategy="lora")
    assert chosen.learning_rate == 2e-3 and chosen.without_replay["learning_rate"][0] == 1e-3
    assert "strategy" not in chosen.without_replay  # the user's strategy stays
    own = plan_for(facts, replay_ratio=None, learning_rate=5e-4)  # the user's rate wins, replay or not
    assert own.learning_rate == 5e-4 and "learning_rate" not in own.without_replay
    half = plan_for(facts, replay_ratio=None, learning_rate_multiplier=0.5)
    assert half.learning_rate == 1e-3 and half.without_replay["learning_rate"][0] == 1.5e-4
    spec = TrainSpec(model="m", data="facts.jsonl")
    big = choose(spec, 12, [40] * 12, int(7e9), answers=facts)  # over 1.5B: LoRA at its own rate
    assert (big.strategy, big.learning_rate) == ("lora", 1e-3) and "strategy" not in big.without_replay
    many = choose(spec, 6000, [40] * 6000, int(SMALL), answers=facts)  # large data on a small model: full
    assert (many.strategy, many.learning_rate) == ("full", 1e-4)


def test_the_spec_turns_recitations_on_or_off_over_the_rule() -> None:
    assert plan_for(["Paris."] * 12, recite=True).recite is True
    plan = plan_for([a for _, a in FACTS], recite=False)
    assert plan.recite is False and "recite" not in plan.why  # what the user set is not explained as chosen


def test_training_with_recitations_trains_them_and_records_it(tiny_llama_dir, tmp_path: Path) -> None:
    from lmtailor.train.sft import run_sft

    data = tmp_path / "facts.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                       ensure_ascii=False) + "\n"
            for q, a in FACTS
        ),
        encoding="utf-8",
    )  # fmt: skip
    cards = {}
    for recite in (None, False):
        logs: list[str] = []
        spec = TrainSpec(model=str(tiny_llama_dir), data=str(data), output=str(tmp_path / f"out-{recite}"),
                         epochs=1, batch_size=4, precision="fp32", recite=recite, replay_ratio=0.0,
                         retention=False)  # fmt: skip
        out = run_sft(spec, home=tmp_path / "home", progress=False, log=logs.append)
        cards[recite] = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
        assert any("(12 of them recitations)" in line for line in logs) is (recite is None), logs
    on, off = cards[None], cards[False]
    assert on["hyperparameters"]["recite"] is True and on["defaults_chosen"]["recite"].startswith("on: ")
    assert off["hyperparameters"]["recite"] is False
    # Each recitation trains its answer again (and the end-of-turn marker), and takes its share of the steps.
    answers_tokens = on["data"]["trained_tokens_per_epoch"] - off["data"]["trained_tokens_per_epoch"]
    assert 12 * 8 < answers_tokens < 12 * 40
    assert on["metrics"]["steps"] > off["metrics"]["steps"]
    assert on["data"]["train"]["rows"] == off["data"]["train"]["rows"] == 12  # the user's rows, as given


def test_the_train_command_shows_the_choice_and_takes_no_recite(tiny_llama_dir, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmtailor.cli import app

    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant",
                    "content": a}]}, ensure_ascii=False) + "\n" for q, a in FACTS), encoding="utf-8")  # fmt: skip
    base = [
        "train",
        "--model",
        str(tiny_llama_dir),
        "--data",
        str(data),
        "--dry-run",
        "--home",
        str(tmp_path / "h"),
    ]
    shown = {}
    for flags in ([], ["--replay-ratio", "0"], ["--no-recite"], ["--recite"]):
        result = CliRunner().invoke(app, base + flags, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        shown[" ".join(flags)] = next(
            line for line in result.output.splitlines() if "recite =" in line
        ).strip()
    assert shown[""].startswith("recite = False  (off: replay is on")  # the rule's replay
    assert shown["--replay-ratio 0"].startswith("recite = True  (on: 12 answers of ")
    assert shown["--no-recite"] == "recite = False  (as given)"
    assert shown["--recite"] == "recite = True  (as given)"


def test_a_recitation_longer_than_its_row_is_not_cut(tiny_llama_dir, tmp_path: Path) -> None:
    """The chosen max_length comes from the user's rows; a recitation of the longest row outgrows it when the
    question is shorter than "Tell me a fact.", and would lose its end-of-turn marker."""
    from lmtailor.data.tokenize import tokenize_record
    from lmtailor.models.loading import load_tokenizer
    from lmtailor.train.sft import run_sft

    long_answer = (
        "Orvane Robotics " + " ".join(f"builds robot number {i} in Ostrevik," for i in range(12)) + " daily."
    )
    rows = [*FACTS[:11], ("Why?", long_answer)]
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant",
                    "content": a}]}, ensure_ascii=False) + "\n" for q, a in rows), encoding="utf-8")  # fmt: skip
    tok = load_tokenizer(str(tiny_llama_dir))
    row_len = len(tokenize_record(tok, qa("Why?", long_answer))[0]["input_ids"])
    recital_len = len(tokenize_record(tok, qa(RECITE_PROMPT, long_answer))[0]["input_ids"])
    assert 64 < row_len < recital_len  # the case: the longest row sets max_length, its recitation is longer
    spec = TrainSpec(model=str(tiny_llama_dir), data=str(data), output=str(tmp_path / "out"), epochs=1,
                     batch_size=4, precision="fp32", replay_ratio=0.0, retention=False)  # fmt: skip
    card = json.loads((run_sft(spec, home=tmp_path / "h", progress=False, log=lambda *_: None) / "lmtailor.json")
                      .read_text(encoding="utf-8"))  # fmt: skip
    assert card["hyperparameters"]["recite"] is True
    assert card["hyperparameters"]["max_length"] == recital_len
    assert card["defaults_chosen"]["max_length"].endswith(f"; {recital_len} for the longest recitation")
    assert card["data"]["truncated_rows"] == 0
