"""The rule's epochs per data size are what docs/defaults.md tells users they are, with replay (the default) and
without it."""

from __future__ import annotations

import re
from pathlib import Path

from lmtailor.specs import TrainSpec
from lmtailor.train.defaults import MAX_EPOCHS, MIN_EPOCHS, REPLAY_RATIO, TARGET_STEPS, choose

DOC = Path(__file__).resolve().parents[2] / "docs" / "defaults.md"
WITHOUT = "without replay"  # the docs' second sentence: the epochs with --replay-ratio 0


def epochs_for(rows: int, replay_ratio: float | None = None) -> float:
    """The epochs the rule picks for the embedded model (135M parameters) and `rows` rows of 40 tokens."""
    spec = TrainSpec(model="smollm2-135m-instruct", data="facts.jsonl", replay_ratio=replay_ratio)
    return choose(spec, rows, [40] * rows, int(135e6)).epochs


def epochs_row() -> str:
    return next(
        line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("| epochs |")
    )


def documented_epochs() -> tuple[dict[int, float], dict[int, float]]:
    """`with replay ... a data set of 108 rows gets 9 epochs, 150 rows 6, ...; without replay ... 108 rows 11, ...`
    from the rule table's epochs row: (with replay, without)."""
    row = epochs_row()
    sentence = row[row.index("a data set of") :]
    with_replay, _, without = sentence.partition(WITHOUT)

    def pairs(text: str) -> dict[int, float]:
        found = re.findall(r"([\d,]+) rows(?: gets)? (\d+)(?: epochs)?", text)
        return {int(rows.replace(",", "")): float(epochs) for rows, epochs in found}

    return pairs(with_replay), pairs(without)


def test_the_documented_epochs_are_the_rules() -> None:
    with_replay, without = documented_epochs()
    assert len(with_replay) >= 4 and len(without) >= 4, (with_replay, without)  # both still there and parsed
    assert {rows: epochs_for(rows) for rows in with_replay} == with_replay
    assert {rows: epochs_for(rows, replay_ratio=0) for rows in without} == without
    assert f"about {TARGET_STEPS} optimizer steps" in epochs_row()


def test_replay_rows_take_the_users_steps_instead_of_adding_to_them() -> None:
    spec = TrainSpec(model="smollm2-135m-instruct", data="facts.jsonl")
    plan = choose(spec, 300, [40] * 300, int(135e6))
    assert plan.replay_ratio == REPLAY_RATIO and plan.epochs == 3  # 375 rows of 8 a step: 47 steps an epoch
    assert "(300 rows and 75 replayed)" in plan.why["epochs"]
    assert plan.without_replay["epochs"][0] == 4  # what a run falls back to where replay cannot be done
    assert epochs_for(300, replay_ratio=0) == 4  # 38 steps an epoch


def test_epochs_fall_with_the_rows_within_the_bounds() -> None:
    for ratio in (None, 0):
        epochs = [epochs_for(rows, ratio) for rows in (1, 8, 40, 108, 300, 600, 5000, 50000)]
        assert epochs == sorted(epochs, reverse=True)
        assert epochs[0] == MAX_EPOCHS and epochs[-1] == MIN_EPOCHS
