"""Whether a record can be trained on (SFT), and a whole-file check that adds token lengths."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtailor.data.records import Record
from lmtailor.errors import DataError, LmtailorError

if TYPE_CHECKING:
    from lmtailor.data.formats import LoadResult


def validate_record(rec: Record) -> str | None:
    """The reason a record is unusable for SFT, or None when it is fine."""
    if not rec.messages:
        return "no messages"
    for check in (_empty_content, _role_order, _ends_with_assistant, _has_trained_turn):
        reason = check(rec)
        if reason:
            return reason
    return None


def _empty_content(rec: Record) -> str | None:
    for i, m in enumerate(rec.messages):
        if not m.content.strip():
            return f"empty content in the {m.role} message (messages[{i}])"
    return None


def _role_order(rec: Record) -> str | None:
    """System only first; then user/assistant alternating, starting with user."""
    start = 1 if rec.messages[0].role == "system" else 0
    for i, m in enumerate(rec.messages[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if m.role == "system":
            return f"system message at messages[{i}]; only the first message may be a system message"
        if m.role != expected:
            return (
                f"messages[{i}] is '{m.role}' where '{expected}' was expected "
                "(turns alternate user/assistant, starting with user)"
            )
    if start == len(rec.messages):
        return "only a system message; no user or assistant turns"
    return None


def _ends_with_assistant(rec: Record) -> str | None:
    last = rec.messages[-1].role
    if last != "assistant":
        return f"last message is '{last}'; a training row must end with an assistant message"
    return None


def _has_trained_turn(rec: Record) -> str | None:
    if not any(m.role == "assistant" and m.weight == 1 for m in rec.messages):
        return "no assistant turn to learn from (every assistant message has weight 0)"
    return None


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
    from lmtailor.data.formats import load_records  # formats imports this module

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
