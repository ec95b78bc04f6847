"""split_records: deterministic, complete, ratios checked, tiny datasets still fill each split."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmtailor.data.records import Message, Record
from lmtailor.data.split import split_records
from lmtailor.errors import LmtailorError


def make(n: int) -> list[Record]:
    return [
        Record(messages=[Message("user", f"q{i}"), Message("assistant", f"a{i}")], line=i + 1)
        for i in range(n)
    ]


def lines(split: dict[str, list[Record]]) -> dict[str, list[int | None]]:
    return {name: [r.line for r in rows] for name, rows in split.items()}


def test_sizes_and_every_record_in_exactly_one_split() -> None:
    records = make(100)
    split = split_records(records)
    assert {k: len(v) for k, v in split.items()} == {"train": 80, "val": 10, "test": 10}
    all_lines = sorted(line for rows in lines(split).values() for line in rows)
    assert all_lines == list(range(1, 101))


def test_same_seed_same_split_other_seed_other_split() -> None:
    records = make(50)
    assert lines(split_records(records, seed=3)) == lines(split_records(records, seed=3))
    assert lines(split_records(records, seed=3)) != lines(split_records(records, seed=4))


def test_records_keep_their_file_order_within_a_split() -> None:
    for rows in lines(split_records(make(40), seed=1)).values():
        assert rows == sorted(rows)


def test_split_does_not_depend_on_the_python_hash_seed() -> None:
    code = (
        "from lmtailor.data.records import Message, Record\n"
        "from lmtailor.data.split import split_records\n"
        "recs = [Record([Message('user', str(i))], line=i) for i in range(30)]\n"
        "print([r.line for r in split_records(recs, seed=7)['val']])\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(run.stdout)
    assert len(outputs) == 1
    expected = [r.line for r in split_records(make(30), seed=7)["val"]]
    assert outputs.pop().strip() == str([line - 1 for line in expected])


@pytest.mark.parametrize(
    ("n", "ratios", "sizes"),
    [
        (3, (0.8, 0.1, 0.1), {"train": 1, "val": 1, "test": 1}),
        (5, (0.8, 0.1, 0.1), {"train": 3, "val": 1, "test": 1}),
        (2, (0.8, 0.1, 0.1), {"train": 1, "val": 1, "test": 0}),
        (1, (0.8, 0.1, 0.1), {"train": 1, "val": 0, "test": 0}),
        (10, (0.9, 0.1), {"train": 9, "val": 1}),
        (10, (1.0, 0.0, 0.0), {"train": 10, "val": 0, "test": 0}),
        (7, (0.5, 0.25, 0.25), {"train": 3, "val": 2, "test": 2}),  # largest remainders: 3.5, 1.75, 1.75
        (4, (0.5, 0.25, 0.25), {"train": 2, "val": 1, "test": 1}),
        (0, (0.8, 0.1, 0.1), {"train": 0, "val": 0, "test": 0}),
    ],
)
def test_sizes_for_small_and_uneven_datasets(
    n: int, ratios: tuple[float, ...], sizes: dict[str, int]
) -> None:
    split = split_records(make(n), ratios)
    assert {k: len(v) for k, v in split.items()} == sizes


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ((0.8, 0.1), "must sum to 1, got 0.9"),
        ((0.8, 0.3, -0.1), "must be non-negative"),
        ((1.0,), "give 2 or 3 split ratios"),
        ((0.5, 0.2, 0.2, 0.1), "give 2 or 3 split ratios"),
        ((float("nan"), 0.5, 0.5), "must be non-negative numbers"),
    ],
)
def test_bad_ratios_are_errors(ratios: tuple[float, ...], message: str) -> None:
    with pytest.raises(LmtailorError, match=message):
        split_records(make(10), ratios)
