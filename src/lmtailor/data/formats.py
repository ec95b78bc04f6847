"""Readers for data files (JSONL, JSON, CSV, Parquet) and converters from each row format to a Record.

read_rows(path)            -> (line, row dict | DataError) for every row of the file
detect_format(row)         -> "chat" | "alpaca" | "sharegpt" | None
to_record(row, fmt, ...)   -> Record, or DataError with a precise reason
load_records(path, ...)    -> LoadResult: the three above plus validation, fail or skip on bad rows
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lmtailor.data.records import Message, Record, validate_record
from lmtailor.errors import DataError

FORMATS = ("chat", "alpaca", "sharegpt")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
# Columns that hold a list in JSON formats; CSV (and some Parquet exports) store them as JSON text.
JSON_TEXT_COLUMNS = ("messages", "conversations", "history")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
MAX_LISTED_ERRORS = 20

Row = dict[str, Any]
Check = Callable[[Record], str | None]


# ---------------------------------------------------------------- reading


def read_rows(path: str | Path) -> Iterator[tuple[int, Row | DataError]]:
    """Every row of a data file with its 1-based line (JSONL, CSV) or row number (JSON array, Parquet).

    A row that cannot be parsed is yielded as a DataError; a file that cannot be read at all raises one.
    """
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".jsonl":
        yield from _read_jsonl(path)
    elif suffix == ".json":
        yield from _read_json(path)
    elif suffix == ".csv":
        yield from _read_csv(path)
    else:
        yield from _read_parquet(path)


def _check_file(path: Path) -> str:
    """The file's lower-case extension, once the file is known to exist and be supported."""
    if not path.is_file():
        raise DataError(str(path), None, "file not found" if not path.exists() else "not a file")
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(
            str(path), None, f"unsupported file type '{suffix}'; use one of {', '.join(EXTENSIONS)}"
        )
    return suffix


def _decode(path: Path, raw: bytes, line: int | None) -> str:
    """UTF-8 text of raw bytes, or a DataError that says where the first non-UTF-8 byte is."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if line is None:
            line = raw.count(b"\n", 0, e.start) + 1
        reason = f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8"
        raise DataError(str(path), line, reason) from None


def _read_text(path: Path) -> str:
    """The whole file as text, without a UTF-8 byte-order mark."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    return _decode(path, raw, None)


def _parse_object(path: Path, line: int, text: str) -> Row | DataError:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return DataError(str(path), line, f"invalid JSON: {e.msg} (column {e.colno})")
    return _as_row(path, line, row)


def _as_row(path: Path, line: int, row: Any) -> Row | DataError:
    if not isinstance(row, dict):
        return DataError(str(path), line, f"expected a JSON object, got {_json_type(row)}")
    return row


def _lines(path: Path, text: str | None = None) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, streamed from disk unless the text is given."""
    if text is not None:
        # split on "\n" only: str.splitlines() would also break lines at U+2028 inside JSON strings
        yield from ((i, s) for i, s in enumerate(text.split("\n"), 1) if s.strip())
        return
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            if i == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            s = _decode(path, raw, i)
            if s.strip():
                yield i, s


def _read_jsonl(path: Path, text: str | None = None) -> Iterator[tuple[int, Row | DataError]]:
    for i, s in _lines(path, text):
        yield i, _parse_object(path, i, s)


def _read_json(path: Path) -> Iterator[tuple[int, Row | DataError]]:
    """A JSON array of objects (row numbers 1-based), a single object, or JSONL saved as .json."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{"):  # one object per line, named .json
            yield from _read_jsonl(path, text)
            return
        raise DataError(str(path), e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, dict):
        yield 1, data
    elif isinstance(data, list):
        for i, row in enumerate(data, 1):
            yield i, _as_row(path, i, row)
    else:
        raise DataError(str(path), None, f"expected a JSON array of objects, got {_json_type(data)}")


def _read_csv(path: Path) -> Iterator[tuple[int, Row | DataError]]:
    """CSV with a header row (line 1); a row's line is where it starts, even if a quoted cell spans lines."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        previous = reader.line_num
        for cells in reader:
            line, previous = previous + 1, reader.line_num
            if any(c.strip() for c in cells):
                yield line, _csv_row(path, line, header, cells)
    except csv.Error as e:
        raise DataError(str(path), reader.line_num, f"invalid CSV: {e}") from None


def _csv_row(path: Path, line: int, header: list[str], cells: list[str]) -> Row | DataError:
    if len(cells) > len(header):
        return DataError(str(path), line, f"row has {len(cells)} fields but the header has {len(header)}")
    row: Row = dict(zip(header, cells, strict=False))
    for name in header[len(cells) :]:
        row[name] = ""
    return _parse_json_columns(path, line, row)


def _parse_json_columns(path: Path, line: int, row: Row) -> Row | DataError:
    """Parse list columns stored as JSON text (CSV cells, some Parquet exports)."""
    for name in JSON_TEXT_COLUMNS:
        value = row.get(name)
        if not isinstance(value, str):
            continue
        if not value.strip():
            del row[name]
            continue
        try:
            row[name] = json.loads(value)
        except json.JSONDecodeError as e:
            return DataError(str(path), line, f"invalid JSON in column '{name}': {e.msg} (column {e.colno})")
    return row


def _read_parquet(path: Path) -> Iterator[tuple[int, Row | DataError]]:
    import pyarrow.parquet as pq  # heavy; only when a Parquet file is read

    try:
        batches = pq.ParquetFile(path).iter_batches()
        line = 0
        for batch in batches:
            for row in batch.to_pylist():
                line += 1
                yield line, _parse_json_columns(path, line, row)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(str(path), None, f"cannot read Parquet: {e}") from None


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- formats


def detect_format(row: Row) -> str | None:
    """The row's format from its keys: chat (messages), alpaca (instruction + output), sharegpt."""
    if "messages" in row:
        return "chat"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "conversations" in row:
        return "sharegpt"
    return None


def to_record(row: Row, fmt: str, path: str | Path, line: int | None) -> Record:
    """The row as a Record; a DataError names what is wrong with its structure."""
    converters = {"chat": _from_chat, "alpaca": _from_alpaca, "sharegpt": _from_sharegpt}
    if fmt not in converters:
        raise DataError(str(path), line, f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    try:
        messages, extra = converters[fmt](row)
    except _RowError as e:
        raise DataError(str(path), line, str(e)) from None
    return Record(messages=messages, source=str(path), line=line, extra=extra)


class _RowError(Exception):
    """A structural problem inside a row; to_record adds the file and line."""


def _text(value: Any, what: str) -> str:
    if value is None:
        raise _RowError(f"{what} is missing")
    if not isinstance(value, str):
        raise _RowError(f"{what} must be a string, got {_json_type(value)}")
    return value


def _optional_text(value: Any, what: str) -> str:
    return "" if value is None else _text(value, what)


def _turns(row: Row, key: str) -> list[Any]:
    turns = row.get(key)
    if not isinstance(turns, list):
        got = "missing" if turns is None else f"a {_json_type(turns)}"
        raise _RowError(f"'{key}' must be a list of messages, got {got}")
    if not turns:
        raise _RowError(f"'{key}' is empty")
    return turns


def _weight(m: dict[str, Any], role: str, where: str) -> int:
    weight = m.get("weight")
    if weight is None:
        return 1
    if isinstance(weight, bool) or weight not in (0, 1):
        raise _RowError(f"{where}.weight must be 0 or 1, got {json.dumps(weight)}")
    if role != "assistant":
        raise _RowError(f"{where}.weight is only allowed on assistant messages, not on '{role}'")
    return int(weight)


def _from_chat(row: Row) -> tuple[list[Message], dict[str, Any]]:
    messages = []
    for i, m in enumerate(_turns(row, "messages")):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _RowError(f"{where} must be an object, got {_json_type(m)}")
        role = m.get("role")
        if role not in ROLES:
            raise _RowError(f"{where}.role must be one of {', '.join(ROLES)}, got {json.dumps(role)}")
        content = _text(m.get("content"), f"{where}.content")
        messages.append(Message(role=role, content=content, weight=_weight(m, role, where)))
    return messages, _extra(row, {"messages"})


def _from_alpaca(row: Row) -> tuple[list[Message], dict[str, Any]]:
    instruction = _text(row.get("instruction"), "'instruction'")
    output = _text(row.get("output"), "'output'")
    extra_input = _optional_text(row.get("input"), "'input'")
    system = _optional_text(row.get("system"), "'system'")
    messages = [Message("system", system)] if system.strip() else []
    messages += _alpaca_history(row.get("history"))
    prompt = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
    messages += [Message("user", prompt), Message("assistant", output)]
    return messages, _extra(row, {"instruction", "input", "output", "system", "history"})


def _alpaca_history(history: Any) -> list[Message]:
    if history is None or history == "":
        return []
    if not isinstance(history, list):
        raise _RowError(f"'history' must be a list of [user, assistant] pairs, got {_json_type(history)}")
    messages = []
    for i, pair in enumerate(history):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _RowError(f"history[{i}] must be a [user, assistant] pair")
        messages.append(Message("user", _text(pair[0], f"history[{i}][0]")))
        messages.append(Message("assistant", _text(pair[1], f"history[{i}][1]")))
    return messages


def _from_sharegpt(row: Row) -> tuple[list[Message], dict[str, Any]]:
    system = _optional_text(row.get("system"), "'system'")  # LLaMA-Factory keeps the system prompt apart
    messages = [Message("system", system)] if system.strip() else []
    for i, m in enumerate(_turns(row, "conversations")):
        where = f"conversations[{i}]"
        if not isinstance(m, dict):
            raise _RowError(f"{where} must be an object, got {_json_type(m)}")
        speaker = m.get("from", m.get("role"))
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            valid = ", ".join(SHAREGPT_ROLES)
            raise _RowError(f"{where}.from must be one of {valid}, got {json.dumps(speaker)}")
        content = _text(m.get("value", m.get("content")), f"{where}.value")
        messages.append(Message(role=role, content=content))
    return messages, _extra(row, {"conversations", "system"})


def _extra(row: Row, used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in used}


# ---------------------------------------------------------------- loading


@dataclass
class LoadResult:
    """The usable records of a file, the rows that were not, and how many rows had each format."""

    records: list[Record] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)


class BadRowsError(DataError):
    """Bad rows of one file: the first MAX_LISTED_ERRORS as 'file:line: reason' lines, then a count."""

    def __init__(self, path: str | Path, errors: list[DataError]):
        self.errors = errors
        listed = "\n".join(f"  {e}" for e in errors[:MAX_LISTED_ERRORS])
        more = len(errors) - MAX_LISTED_ERRORS
        tail = f"\n  … and {more} more" if more > 0 else ""
        noun = "row" if len(errors) == 1 else "rows"
        super().__init__(str(path), None, f"{len(errors)} bad {noun}:\n{listed}{tail}")


def load_records(
    path: str | Path,
    fmt: str = "auto",
    on_error: Literal["fail", "skip"] = "fail",
    check: Check | None = validate_record,
) -> LoadResult:
    """Read, convert and check every row of a file.

    With on_error="fail" any bad row raises BadRowsError listing them all (first 20 shown); with "skip"
    the good rows are kept and the bad ones returned in .errors. `check` is the usability rule for a
    record (default: SFT's validate_record); pass None for prompts-only data (evaluation, RFT).
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(str(path), None, f"unknown format '{fmt}'; use auto or one of {', '.join(FORMATS)}")
    if on_error not in ("fail", "skip"):
        raise DataError(str(path), None, f"on_error must be 'fail' or 'skip', got '{on_error}'")
    result = LoadResult()
    rows = 0
    for line, row in read_rows(path):
        rows += 1
        try:
            row_fmt, record = _load_row(path, line, row, fmt, check)
        except DataError as e:
            result.errors.append(e)
            continue
        result.records.append(record)
        result.formats[row_fmt] += 1
    if rows == 0:
        raise DataError(str(path), None, "no rows")
    if result.errors and on_error == "fail":
        raise BadRowsError(path, result.errors)
    return result


def _load_row(
    path: str | Path, line: int, row: Row | DataError, fmt: str, check: Check | None
) -> tuple[str, Record]:
    if isinstance(row, DataError):
        raise row
    row_fmt = detect_format(row) if fmt == "auto" else fmt
    if row_fmt is None:
        keys = ", ".join(sorted(row)) or "none"
        reason = (
            "unknown row format: expected 'messages' (chat), 'instruction' + 'output' (alpaca) "
            f"or 'conversations' (sharegpt); keys: {keys}"
        )
        raise DataError(str(path), line, reason)
    record = to_record(row, row_fmt, path, line)
    reason = check(record) if check else None
    if reason:
        raise DataError(str(path), line, reason)
    return row_fmt, record
