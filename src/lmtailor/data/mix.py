"""Several training files in one run (TrainSpec.data as a list): each file's rows, a validation share held out of
each, and a seeded draw that gives each file the share of the mixture its weight asks for.

    rows      = load_records(file)                  per file, its usable rows
    val       = split_records(rows, val_ratio)      per file, so each one is represented in validation
    shares    = shares(weights, available)          weights as given, the rest by rows, or all by rows
    counts    = round(share x N)                    N: the rows of all files together (after validation)
    train     = draw(rows, count, seed)             without replacement; past a file's rows: all repeated + rest

Each row keeps its file's name (the stem, made unique) in `Record.extra["source"]`: validation reports a loss per
name, and `lmtailor eval` scores per `source` when a test file's rows carry one.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from lmtailor.data.records import Record
from lmtailor.errors import DataError
from lmtailor.specs import DataSource, TrainSpec

SOURCE_KEY = "source"  # Record.extra key naming the file a row came from


@dataclass
class Source:
    """One file of the mixture and what the draw took from it (a row of the card's data.sources)."""

    name: str  # the file's stem, made unique: Record.extra["source"], eval_<name>_loss
    path: str
    weight_given: float | None
    sha256: str = ""
    rows: int = 0  # usable rows in the file
    val_rows: int = 0  # held out for validation (val_ratio)
    rows_available: int = 0  # what the draw picks from: rows - val_rows
    weight: float = 0.0  # its share of the mixture, weights scaled and the rest shared out
    rows_drawn: int = 0  # training rows drawn, repeats included

    def as_dict(self) -> dict:
        return asdict(self)


class MixedRows(list):
    """The training rows of a mixture, with the record of the draw (`sources`) for the log and the card."""

    sources: list[Source]
    seed: int


def source_names(sources: list[DataSource]) -> list[str]:
    """Each file's name (given, else its stem) in letters, digits, '.', '_' and '-', made unique with -2, -3…"""
    names: list[str] = []
    for source in sources:
        stem = re.sub(r"[^\w.-]+", "_", source.name or Path(source.path).stem).strip("_") or "data"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.append(name)
    return names


def shares(weights: list[float | None], rows: list[int]) -> list[float]:
    """Each file's share of the mixture: by rows with no weight given; the weights scaled to sum to 1 when every
    file has one; else the weights as given, and what they leave (1 - their sum) shared by the others' rows."""
    given = [w for w in weights if w is not None]
    if not given:
        return [r / sum(rows) for r in rows]
    if len(given) == len(weights):
        return [w / sum(given) for w in given]
    rest = 1 - sum(given)
    free = sum(r for r, w in zip(rows, weights, strict=True) if w is None)
    return [w if w is not None else rest * r / free for r, w in zip(rows, weights, strict=True)]


def counts(share: list[float], rows: list[int]) -> list[int]:
    """Rows each file gives a mixture of sum(rows) rows: round(share x N) (halves up), at least one."""
    total = sum(rows)
    return [max(1, math.floor(s * total + 0.5)) for s in share]


def draw(records: list[Record], count: int, rng: random.Random) -> list[Record]:
    """`count` of the records: drawn without replacement up to their number; past it every record is repeated
    as often as it fits whole and the rest drawn. File order is kept."""
    whole, rest = divmod(count, len(records))
    picked = sorted(rng.sample(range(len(records)), rest))
    return records * whole + [records[i] for i in picked]


def load_mixture(spec: TrainSpec) -> tuple[MixedRows, list[Record]]:
    """The training rows of several files mixed as their weights ask, and the validation rows: `val_data`'s, or
    `val_ratio` of each file's. Seeded by `spec.seed`; the same spec draws the same rows."""
    from lmtailor.data.formats import load_records
    from lmtailor.data.split import split_records

    listed: list[DataSource] = spec.data_sources()
    names = source_names(listed)
    sources, parts, val = [], [], []
    for name, given in zip(names, listed, strict=True):
        rows = load_records(given.path, fmt=spec.format, on_error=spec.on_error).records
        if not rows:
            raise DataError(given.path, None, "no usable rows")
        for rec in rows:
            rec.extra[SOURCE_KEY] = name
        held: list[Record] = []
        if not spec.val_data and spec.val_ratio > 0:
            split = split_records(rows, ratios=(1 - spec.val_ratio, spec.val_ratio, 0.0), seed=spec.seed)
            rows, held = split["train"], split["val"]
            if not rows:
                raise DataError(
                    given.path, None, f"its {len(held)} row(s) all held out for validation: lower val_ratio"
                )
        val += held
        parts.append(rows)
        path = str(Path(given.path).expanduser().resolve())
        sources.append(Source(name, path, given.weight, sha256=_sha256(path), rows=len(rows) + len(held),
                              val_rows=len(held), rows_available=len(rows)))  # fmt: skip
    if spec.val_data:
        val = load_records(spec.val_data, fmt=spec.format, on_error=spec.on_error).records
    available = [len(p) for p in parts]
    share = shares([s.weight_given for s in sources], available)
    weighted = any(s.weight_given is not None for s in sources)
    wanted = counts(share, available) if weighted else available  # no weight given: every row once
    train = MixedRows()
    for source, rows, weight, count in zip(sources, parts, share, wanted, strict=True):
        source.weight, source.rows_drawn = round(weight, 6), count
        train += draw(rows, count, random.Random(f"mix:{spec.seed}:{source.name}"))
    train.sources, train.seed = sources, spec.seed
    return train, val


def mixture_lines(sources: list[Source]) -> list[str]:
    """The training log's lines on a mixture: per file, rows available, drawn and its weight."""
    lines = []
    for s in sources:
        given = f" (given {s.weight_given:g})" if s.weight_given is not None else ""
        val = f", {s.val_rows} held out for validation" if s.val_rows else ""
        lines.append(f"  source {s.name}: {s.rows_available} rows available, {s.rows_drawn} drawn, "
                     f"weight {s.weight:.3f}{given}{val}  [{s.path}]")  # fmt: skip
    return lines


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
