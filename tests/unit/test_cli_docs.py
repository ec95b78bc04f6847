"""docs/cli.md is generated from --help; it must match the code, and --help must not import torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current():
    r = subprocess.run(
        [sys.executable, "scripts/gen_cli_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_help_imports_no_torch():
    code = "import sys; from lmtailor.cli import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]


def test_cli_reference_covers_every_command():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for cmd in ("train", "tune", "eval", "quickstart", "chat", "data validate", "data clean", "models show"):
        assert f"\n## lmtailor {cmd}\n" in text
    assert "--eval-metrics" in text and "--on-error" in text


def test_python_m_lmtailor_is_the_command():
    r = subprocess.run([sys.executable, "-m", "lmtailor", "tune", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Search strategy and hyperparameters" in r.stdout, r.stderr
