"""Atomic writes: a crash leaves the old or the new file, and the new file is as readable as a plain write's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lmtailor.home import atomic_write_json, atomic_write_text


def test_a_new_file_is_readable_by_others_and_a_rewrite_keeps_the_mode(tmp_path: Path) -> None:
    card = tmp_path / "model" / "lmtailor.json"
    atomic_write_json(card, {"a": 1})  # a card the server (perhaps another user) reads
    assert card.stat().st_mode & 0o777 == 0o644
    os.chmod(card, 0o600)  # the user made it private: a rewrite keeps it so
    atomic_write_text(card, "{}\n")
    assert card.stat().st_mode & 0o777 == 0o600 and card.read_text() == "{}\n"
    assert [p.name for p in card.parent.iterdir()] == ["lmtailor.json"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(TypeError):  # the write itself fails, after the temporary file was made
        atomic_write_text(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
