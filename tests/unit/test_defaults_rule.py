"""The rule's epochs per data size are what docs/defaults.md tells users they are."""

from __future__ import annotations

import re
from pathlib import Path

from lmtailor.specs import TrainSpec
from lmtailor.train.defaults import MAX_EPOCHS, MIN_EPOCHS, TARGET_STEPS, choose

DOC = Path(__file__).resolve().parents[2] / "docs" / "defaults.md"


def epochs_for(rows: int) -> float:
    """The epochs the rule picks for the embedded model (135M parameters) and `rows` rows of 40 tokens."""
    return choose(
        TrainSpec(model="smollm2-135m-instruct", data="facts.jsonl"), rows, [40] * rows, int(135e6)
    ).epochs


def epochs_row() -> str:
    return next(
        line for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("| epochs |")
    )


def documented_epochs() -> dict[int, float]:
    """`a data set of 108 rows gets 11 epochs, 150 rows 8, ...` from the rule table's epochs row."""
    row = epochs_row()
    sentence = row[row.index("a data set of") :]
    pairs = re.findall(r"([\d,]+) rows(?: gets)? (\d+)(?: epochs)?", sentence)
    return {int(rows.replace(",", "")): float(epochs) for rows, epochs in pairs}


def test_the_documented_epochs_are_the_rules() -> None:
    documented = documented_epochs()
    assert len(documented) >= 4, documented  # the sentence is still there and still parsed
    assert {rows: epochs_for(rows) for rows in documented} == documented
    assert f"about {TARGET_STEPS} optimizer steps" in epochs_row()


def test_epochs_fall_with_the_rows_within_the_bounds() -> None:
    epochs = [epochs_for(rows) for rows in (1, 8, 40, 108, 300, 600, 5000, 50000)]
    assert epochs == sorted(epochs, reverse=True)
    assert epochs[0] == MAX_EPOCHS and epochs[-1] == MIN_EPOCHS
