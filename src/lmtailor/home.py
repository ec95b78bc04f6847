"""The home folder: database, uploaded files, datasets, runs and models (DESIGN.md: LMTAILOR_HOME)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def home_dir(home: str | Path | None = None) -> Path:
    """The home folder: the argument, else $LMTAILOR_HOME, else ~/.lmtailor. Created if missing."""
    path = Path(home or os.environ.get("LMTAILOR_HOME") or Path.home() / ".lmtailor").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that a crash leaves either the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        keep_mode(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep_mode(tmp: str | Path, path: Path) -> None:
    """Give a temporary file about to replace `path` the mode `path` has (0644 for a new file): mkstemp makes
    it 0600, which would leave cards, reports and data unreadable to the group and others."""
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
