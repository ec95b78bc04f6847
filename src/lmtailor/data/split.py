"""Deterministic train/val/test splits."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from lmtailor.data.records import Record
from lmtailor.errors import LmtailorError

SPLIT_NAMES = ("train", "val", "test")
GROUP_KEYS = ("group", "fact")  # a row's own name for the question it phrases (held_out_phrasings)


def split_records(
    records: Sequence[Record], ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Record]]:
    """Records shuffled with `seed` and cut by `ratios` (2 or 3 values: train, val[, test]).

    The same seed gives the same split on every run (random.Random with an int seed does not depend on
    PYTHONHASHSEED). Each record lands in exactly one split, in its original order; every split with a
    non-zero ratio gets at least one row when there are enough rows.
    """
    ratios = check_ratios(ratios)
    counts = _counts(len(records), ratios)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    splits: dict[str, list[Record]] = {}
    start = 0
    for name, count in zip(SPLIT_NAMES, counts, strict=False):
        chosen = sorted(order[start : start + count])
        splits[name] = [records[i] for i in chosen]
        start += count
    return splits


def check_ratios(ratios: Sequence[float]) -> list[float]:
    """The ratios as floats, or an error: 2 or 3 finite non-negative values summing to 1."""
    values = [float(r) for r in ratios]
    if len(values) not in (2, 3):
        raise LmtailorError(f"give 2 or 3 split ratios (train, val[, test]), got {len(values)}")
    if any(not math.isfinite(r) or r < 0 for r in values):
        raise LmtailorError(f"split ratios must be non-negative numbers, got {values}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise LmtailorError(f"split ratios must sum to 1, got {sum(values):g}")
    return values


def _counts(n: int, ratios: list[float]) -> list[int]:
    """Rows per split: largest remainders, then at least one row for each non-zero ratio when possible."""
    exact = [n * r for r in ratios]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(ratios)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    for i, r in enumerate(ratios):
        donor = max(range(len(counts)), key=lambda j: counts[j])
        if r > 0 and counts[i] == 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


def held_out_phrasings(
    records: Sequence[Record],
    answers: Sequence[str | None],
    ratio: float,
    seed: int = 0,
    labels: bool = False,
) -> tuple[list[Record], list[Record], str]:
    """A validation split that measures generalisation: (train, val, how).

    `answers[i]` is record i's answer (None: a row without one). With `labels` (a few short answers, each given
    to many rows) the split is stratified: each label gives its share of rows, at least one, and keeps at least
    one in training. Otherwise rows of one group are phrasings of one question: one phrasing of a group is held
    out at a time, a group never wholly, so every validation question's answer was trained in other words; a
    row alone in its group stays in training. A row's group is its `group` key (or `fact`, as the quickstart's
    rows have: their answers are worded anew with each question), else its answer. Where no group has two rows,
    a seeded random split.
    """
    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, (record, answer) in enumerate(zip(records, answers, strict=True)):
        named = next(
            (record.extra[k] for k in GROUP_KEYS if isinstance(record.extra.get(k), str | int)), None
        )
        if named is not None and not labels:
            groups.setdefault(f"group:{named}", []).append(i)
        elif answer is not None:
            groups.setdefault(" ".join(answer.lower().split()), []).append(i)
    shared = {key: rows for key, rows in groups.items() if len(rows) > 1}
    want = max(1, round(ratio * len(records)))
    held: set[int] = set()
    if labels and shared:
        for rows in shared.values():
            take = min(len(rows) - 1, max(1, round(ratio * len(rows))))
            held.update(rng.sample(rows, take))
        how = f"stratified by label ({len(shared)} labels)"
    elif shared:
        pools = {key: rng.sample(rows, len(rows)) for key, rows in shared.items()}
        keys = sorted(pools)
        rng.shuffle(keys)
        while len(held) < want and any(len(pools[k]) > 1 for k in keys):
            for key in keys:
                # the last phrasing of an answer stays in training
                if len(held) < want and len(pools[key]) > 1:
                    held.add(pools[key].pop())
        how = f"held-out phrasings ({len(shared)} questions asked in several phrasings)"
    else:
        parts = split_records(records, ratios=(1 - ratio, ratio), seed=seed)
        return parts["train"], parts["val"], "random (no answer or group has more than one row)"
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [r for i, r in enumerate(records) if i in held], how
