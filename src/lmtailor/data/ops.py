"""What `lmtailor data inspect | clean | split` do to a file, for both doors that offer them: the CLI
(cli/data.py) and the console's endpoints (serve/routes/console.py). Each door only reads its arguments and
shows or stores the result; how a file is read, which bad rows are skipped and what counts as nothing left is
decided here once, with one set of defaults:

- inspect and clean skip bad rows (they list or count them: looking and cleaning are how a user finds them);
- split fails on the first bad row, naming it: a split is meant to hold every row, and one dropped silently
  would be missing from all three parts. `on_error="skip"` splits the good rows and reports the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmtailor.data.formats import LoadResult, load_records
from lmtailor.data.records import Record
from lmtailor.errors import LmtailorError

OnError = Literal["fail", "skip"]
CLEAN_ON_ERROR: OnError = "skip"
SPLIT_ON_ERROR: OnError = "fail"


@dataclass
class Inspection:
    loaded: LoadResult
    summary: dict[str, Any]
    lengths: list[int] | None  # tokens per row, when a tokenizer counted them


@dataclass
class Cleaned:
    loaded: LoadResult
    kept: list[Record]
    report: dict[str, int] = field(default_factory=dict)  # input, invalid, then what each step dropped


def inspect_file(path: Path, fmt: str = "auto", tokenizer=None) -> Inspection:
    from lmtailor.data.summary import summarize
    from lmtailor.data.validate import token_length

    loaded = load_records(path, fmt, on_error="skip")
    lengths = [token_length(tokenizer, r) for r in loaded.records] if tokenizer is not None else None
    return Inspection(loaded, summarize(loaded.records, tokenizer, loaded.formats, lengths), lengths)


def clean_file(path: Path, fmt: str = "auto", on_error: OnError = CLEAN_ON_ERROR, *, tokenizer=None,
               dedup: bool = True, near_dup_threshold: float = 0.9, max_tokens: int | None = None,
               mask_pii: bool = False, name: str | None = None) -> Cleaned:  # fmt: skip
    """The file's rows trimmed, deduplicated, masked and length-capped; an error when none are left.
    `name`: what the error calls the file (an upload's own name rather than its path on the server)."""
    from lmtailor.data.clean import clean_records

    if max_tokens is not None and tokenizer is None:
        raise LmtailorError("max_tokens needs a model, whose tokenizer counts the tokens")
    loaded = load_records(path, fmt, on_error=on_error)
    kept, report = clean_records(loaded.records, dedup=dedup, near_dup_threshold=near_dup_threshold,
                                 max_tokens=max_tokens, tokenizer=tokenizer, mask_pii=mask_pii)  # fmt: skip
    if not kept:
        raise LmtailorError(f"no rows left after cleaning {name or path}; nothing written")
    return Cleaned(loaded, kept, {"input": report.pop("input"), "invalid": len(loaded.errors), **report})


def split_file(path: Path, ratios, seed: int = 0, fmt: str = "auto",
               on_error: OnError = SPLIT_ON_ERROR) -> tuple[LoadResult, dict[str, list[Record]]]:  # fmt: skip
    """The rows cut by `ratios` (train, val[, test]) with `seed`: each part's rows, the parts whose ratio is 0
    left out."""
    from lmtailor.data.split import SPLIT_NAMES, check_ratios, split_records

    values = check_ratios(ratios)
    loaded = load_records(path, fmt, on_error=on_error)
    parts = split_records(loaded.records, values, seed)
    return loaded, {n: parts[n] for n, r in zip(SPLIT_NAMES, values, strict=False) if r > 0}
