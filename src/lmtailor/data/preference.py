"""Preference rows for DPO: OpenAI's format and the common one, read like every other data file.

    OpenAI:  {"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": ...}],
              "non_preferred_output": [{"role": "assistant", "content": ...}]}
    common:  {"prompt": "..." or [messages], "chosen": "..." or [messages], "rejected": ...}
             ({"messages": [...], "chosen": ..., "rejected": ...} too)

Each bad row is a DataError naming file and line; on_error "fail" stops with all of them, "skip" keeps the
good rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lmtailor.data.formats import BadRowsError, read_rows
from lmtailor.errors import DataError


@dataclass
class Preference:
    prompt: list[dict]  # the conversation up to the answer, ending with a user turn
    chosen: str
    rejected: str
    line: int | None = None


def load_preferences(path: str | Path, on_error: Literal["fail", "skip"] = "fail") -> tuple[list[Preference], list[DataError]]:  # fmt: skip
    rows, errors = [], []
    for line, row in read_rows(path):
        got = row if isinstance(row, DataError) else _preference(row, path, line)
        (errors if isinstance(got, DataError) else rows).append(got)
    if errors and on_error == "fail":
        raise BadRowsError(path, errors)
    if not rows and not errors:
        raise DataError(str(path), None, "the file holds no rows")
    return rows, errors


def _preference(row: dict[str, Any], path, line: int) -> Preference | DataError:
    def bad(reason: str) -> DataError:
        return DataError(str(path), line, reason)

    if "preferred_output" in row or "non_preferred_output" in row:
        prompt = (row.get("input") or {}).get("messages") if isinstance(row.get("input"), dict) else None
        chosen, rejected = row.get("preferred_output"), row.get("non_preferred_output")
    elif "chosen" in row or "rejected" in row:
        prompt = row.get("prompt", row.get("messages"))
        chosen, rejected = row.get("chosen"), row.get("rejected")
    else:
        return bad("not a preference row: expected input/preferred_output/non_preferred_output "
                   "or prompt/chosen/rejected")  # fmt: skip
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        return bad("the prompt is missing or empty")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            return bad(f"prompt message {i + 1}: needs a role of system, user or assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return bad(f"prompt message {i + 1} ({m.get('role')}): empty content")
    if prompt[-1]["role"] != "user":
        return bad(f"the prompt must end with a user message, not {prompt[-1]['role']!r}")
    texts = []
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        text = _answer(value)
        if text is None:
            return bad(f"{name}: an assistant answer (a string or a list with one assistant message)")
        texts.append(text)
    if texts[0] == texts[1]:
        return bad("chosen and rejected are the same answer: nothing to prefer")
    return Preference(
        [{"role": m["role"], "content": m["content"]} for m in prompt], texts[0], texts[1], line
    )


def _answer(value) -> str | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, list) and value:
        last = value[-1]
        if (
            isinstance(last, dict)
            and last.get("role", "assistant") == "assistant"
            and isinstance(last.get("content"), str)
        ):
            return last["content"] if last["content"].strip() else None
    return None
