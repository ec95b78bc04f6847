"""`lmtailor quickstart`: ask held-out questions about a fictional company, train on its facts, ask again.

Timings on a 2-core CPU (bf16): convert the embedded model ~40 s (once), base answers ~20 s,
training ~6 min, tuned answers ~20 s.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmtailor.home import atomic_write_json, home_dir
from lmtailor.models.catalog import EMBEDDED

QUICKSTART_MODEL = "quickstart"


def sample_files(home: str | Path | None = None) -> tuple[Path, Path]:
    """Copy the shipped sample data into <home>/datasets/quickstart and return (train, test)."""
    target = home_dir(home) / "datasets" / "quickstart"
    target.mkdir(parents=True, exist_ok=True)
    src = resources.files("lmtailor.quickstart") / "data"
    for name in ("train.jsonl", "test.jsonl", "README.md"):
        shutil.copyfile(str(src / name), target / name)
    return target / "train.jsonl", target / "test.jsonl"


def ask(model_ref: str | Path, rows: list[dict], home, console: Console, label: str) -> list[str]:
    from lmtailor.evaluate.generate import generate
    from lmtailor.models.loading import load_model, load_tokenizer

    t0 = time.time()
    tok = load_tokenizer(str(model_ref), home)
    model = load_model(str(model_ref), home)
    answers = generate(model, tok, [r["messages"] for r in rows], max_new_tokens=96)
    console.print(f"{label}: answered {len(rows)} questions in {time.time() - t0:.0f} s")
    del model
    return answers


def run_quickstart(home=None, limit: int | None = None, console: Console | None = None) -> dict:
    from lmtailor.evaluate.match import contains
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    console = console or Console()
    start = time.time()
    train_file, test_file = sample_files(home)
    rows = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    n_train = sum(1 for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip())
    console.rule("lmtailor quickstart")
    console.print(
        f"The embedded model ({EMBEDDED}) knows nothing about Orvane Robotics, a company we made up.\n"
        f"We ask it {len(rows)} questions it will never see in training, teach it {n_train} question-answer\n"
        f"pairs about the company (from {train_file}), then ask again."
    )
    console.rule("1. the base model")
    base_answers = ask(EMBEDDED, rows, home, console, "base model")
    console.rule("2. fine-tuning with lmtailor's defaults")
    out = home_dir(home) / "models" / QUICKSTART_MODEL
    spec = TrainSpec(model=EMBEDDED, data=str(train_file), output=str(out))
    run_sft(spec, home=home, log=console.print)
    console.rule("3. the tuned model")
    tuned_answers = ask(out, rows, home, console, "tuned model")

    table = Table("question", "reference", "base answer", "tuned answer", "correct?", show_lines=True)
    base_ok = tuned_ok = 0
    results = []
    for row, b, t in zip(rows, base_answers, tuned_answers, strict=False):
        ok_b, ok_t = contains(b, row["reference"]), contains(t, row["reference"])
        base_ok += ok_b
        tuned_ok += ok_t
        results.append({"question": row["messages"][-1]["content"], "reference": row["reference"],
                        "base": b, "tuned": t, "base_correct": ok_b, "tuned_correct": ok_t})  # fmt: skip
        table.add_row(
            row["messages"][-1]["content"],
            row["reference"],
            b,
            t,
            "[green]yes[/green]" if ok_t else "[red]no[/red]",
        )
    console.print(table)
    n = max(1, len(rows))
    summary = {
        "questions": len(rows),
        "base_accuracy": base_ok / n,
        "tuned_accuracy": tuned_ok / n,
        "model": str(out),
        "minutes": round((time.time() - start) / 60, 1),
        "results": results,
    }
    atomic_write_json(out / "quickstart.json", summary)
    console.print(
        f"\naccuracy on held-out questions: base [red]{base_ok}/{len(rows)} ({base_ok / n:.0%})[/red] → "
        f"tuned [green]{tuned_ok}/{len(rows)} ({tuned_ok / n:.0%})[/green]   ({summary['minutes']} min)"
    )
    console.print(f"the tuned model is in {out}\nchat with it:   lmtailor chat {QUICKSTART_MODEL}")
    return summary
