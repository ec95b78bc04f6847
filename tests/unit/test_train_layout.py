"""train/: each method module imports train/core.py and no other method, nor the entry point (train/sft.py, which
picks the method); the core imports none of them, not even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import lmtailor.train
from lmtailor.train.sft import METHODS

TRAIN = Path(lmtailor.train.__file__).parent


def imported(name: str) -> set[str]:
    """The lmtailor.train modules `name` imports anywhere in its file."""
    found = set()
    for node in ast.walk(ast.parse((TRAIN / f"{name}.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "lmtailor.train":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmtailor.train."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("lmtailor.train.")}
    return found


def test_methods_share_the_core_and_import_no_other_method():
    methods = {path.rsplit(".", 1)[1] for path in METHODS.values()}
    assert methods == {"supervised", "dpo", "rft"}
    for name in methods:
        assert "core" in imported(name), name
        assert not imported(name) & (methods | {"sft"}), (name, imported(name))
    assert not imported("core") & (methods | {"sft"})
