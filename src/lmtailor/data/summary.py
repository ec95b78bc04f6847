"""What a dataset holds (rows, roles, turns, token lengths), and writing records back as chat JSONL."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lmtailor.data.records import Record
from lmtailor.data.validate import token_length
from lmtailor.home import keep_mode


def summarize(
    records: Sequence[Record],
    tokenizer: Any = None,
    formats: Mapping[str, int] | None = None,
    lengths: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Rows, formats (from LoadResult.formats), roles, messages per row, extra keys, token percentiles (from
    `lengths` when the caller has counted them already, else through `tokenizer`)."""
    turns = [len(r.messages) for r in records]
    summary: dict[str, Any] = {
        "rows": len(records),
        "formats": dict(formats or {}),
        "roles": dict(Counter(m.role for r in records for m in r.messages)),
        "messages_per_row": _stats(turns),
        "with_system": sum(1 for r in records if r.messages and r.messages[0].role == "system"),
        "extra_keys": dict(Counter(k for r in records for k in r.extra)),
    }
    if lengths is None and tokenizer is not None:
        lengths = [token_length(tokenizer, r) for r in records]
    if lengths is not None:
        summary["tokens"] = _percentiles(list(lengths))
    return summary


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 2), "max": max(values)}


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _percentiles(lengths: list[int]) -> dict[str, int]:
    values = sorted(lengths)
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1] if values else 0,
    }


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write records as chat JSONL (UTF-8, not escaped) atomically; returns the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for rec in records:
                # default=str: Parquet extra columns may hold dates or decimals
                f.write(json.dumps(rec.to_chat(), ensure_ascii=False, default=str) + "\n")
                count += 1
        keep_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
