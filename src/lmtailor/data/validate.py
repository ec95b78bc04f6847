"""A whole-file check that adds token lengths to the per-row rules (records.validate_record)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmtailor.data.formats import LoadResult, load_records
from lmtailor.data.records import Record
from lmtailor.errors import DataError, LmtailorError


def token_length(tokenizer: Any, rec: Record) -> int:
    """Tokens of the record through the tokenizer's chat template.

    transformers 5 returns a BatchEncoding (return_dict=True by default); older versions a list of ids.
    """
    out = tokenizer.apply_chat_template(rec.as_dicts(), tokenize=True)
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if len(ids) and isinstance(ids[0], list | tuple):  # a batch of one
        ids = ids[0]
    return len(ids)


def validate_file(
    path: str | Path, fmt: str = "auto", tokenizer: Any = None, max_length: int | None = None
) -> LoadResult:
    """Every bad row of a file in .errors (never raises for rows), over-long rows included.

    Over-long rows ("over-long: N tokens > max_length M") need a tokenizer and are left out of .records.
    """
    if max_length is not None and tokenizer is None:
        raise LmtailorError("max_length needs a tokenizer to count tokens")
    result = load_records(path, fmt, on_error="skip")
    if max_length is None:
        return result
    kept = []
    for rec in result.records:
        n = token_length(tokenizer, rec)
        if n > max_length:
            result.errors.append(
                DataError(rec.source, rec.line, f"over-long: {n} tokens > max_length {max_length}")
            )
        else:
            kept.append(rec)
    result.records = kept
    result.errors.sort(key=lambda e: e.line or 0)
    return result
