"""`lmtailor quickstart`: ask held-out questions about a fictional company, train on its facts, ask again.

Both askings are `lmtailor eval` runs (evaluate/runner.run_eval): the second reuses the base model's cached
answers and adds intervals and a McNemar test of tuned against base, with report.md / report.html.
Timings on a 2-core AMD EPYC without bf16 (fp32; 2026-12-07): convert the embedded model ~40 s (once); the base's
answers, the replay rows' answers and the base's answers to the general probes come with the package for the
embedded model (evaluate/answers.shipped_answers); training 144 steps (3 epochs over the 300 rows and 75 rows of the
base's own answers to general prompts, docs/defaults.md) 444 s; at the end of training, retention
(evaluate/retention.py): the tuned model's answers to the 111 general probes the base answered acceptably, ~30 s;
tuned answers ~30 s. 9 min 6 s in all on that VM, where the rule before replay (312 steps with recitations, no
replay) trained for 1,026-1,044 s.
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lmtailor.home import atomic_write_json, atomic_write_text, home_dir
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


def ask(models: list[str], test_file: Path, out: Path, home, console: Console) -> dict:
    """`lmtailor eval` on the held-out questions: answers cached per model, so the base model answers once."""
    from lmtailor.evaluate.runner import run_eval
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.platform.record import record_eval, record_quietly

    spec = EvalSpec(
        models=models, data=str(test_file), metrics=["contains"], max_new_tokens=96, output=str(out)
    )
    result = run_eval(spec, home=home, log=console.print)
    record_quietly(record_eval, result, home, door="quickstart", log=console.print)
    return result


def _answers(result: dict) -> list[dict]:
    lines = (Path(result["output"]) / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_quickstart(home=None, limit: int | None = None, console: Console | None = None) -> dict:
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    console = console or Console()
    start = time.time()
    train_file, test_file = sample_files(home)
    rows = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if limit:
        rows = rows[:limit]
        test_file = test_file.with_name(f"test-first-{limit}.jsonl")
        atomic_write_text(test_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    n_train = sum(1 for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip())
    console.rule("lmtailor quickstart")
    console.print(
        f"The embedded model ({EMBEDDED}) knows nothing about Orvane Robotics, a company we made up.\n"
        f"We ask it {len(rows)} questions it will never see in training, teach it {n_train} question-answer\n"
        f"pairs about the company (from {train_file}), then ask again."
    )
    out = home_dir(home) / "models" / QUICKSTART_MODEL
    evals = home_dir(home) / "evals" / QUICKSTART_MODEL
    console.rule("1. the base model")
    before = ask([EMBEDDED], test_file, evals / "base", home, console)
    base_score = before["models"][0]["scores"]["contains"]
    console.print(f"base model: {base_score['value']:.0%} of the held-out questions answered")
    console.rule("2. fine-tuning with lmtailor's defaults")
    spec = TrainSpec(model=EMBEDDED, data=str(train_file), output=str(out))
    plain = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731 (answers are text)
    run_sft(spec, home=home, log=plain)
    from lmtailor.platform.record import record_quietly, record_training

    record_quietly(
        record_training, out, home, door="quickstart", log=plain
    )  # its curve and card in the console
    console.rule("3. the tuned model (the base model's answers come from the cache)")
    t0 = time.time()
    result = ask([EMBEDDED, str(out)], test_file, evals / "compare", home, console)
    console.print(f"tuned model: answered {len(rows)} questions in {time.time() - t0:.0f} s")

    table = Table("question", "reference", "base answer", "tuned answer", "correct?", show_lines=True)
    results = []
    for item in _answers(result):
        b, t = item["predictions"][EMBEDDED], item["predictions"][str(out)]
        ok_b, ok_t = bool(b["scores"]["contains"]), bool(t["scores"]["contains"])
        question = item["prompt"][-1]["content"]
        results.append({"question": question, "reference": item["reference"], "base": b["answer"],
                        "tuned": t["answer"], "base_correct": ok_b, "tuned_correct": ok_t})  # fmt: skip
        table.add_row(question, item["reference"], b["answer"], t["answer"],
                      "[green]yes[/green]" if ok_t else "[red]no[/red]")  # fmt: skip
    console.print(table)
    base, tuned = (m["scores"]["contains"] for m in result["models"])
    versus = result["models"][1]["vs_baseline"]["contains"]
    base_ok = sum(r["base_correct"] for r in results)
    tuned_ok = sum(r["tuned_correct"] for r in results)
    summary = {
        "questions": len(rows),
        "base_accuracy": base["value"],
        "tuned_accuracy": tuned["value"],
        "tuned_ci95": [tuned["ci_low"], tuned["ci_high"]],
        "vs_base": versus,
        "model": str(out),
        "eval": result["output"],
        "minutes": round((time.time() - start) / 60, 1),
        "results": results,
    }
    kept = result["models"][1].get("retention")
    if kept and kept.get("eligible"):
        summary["retention"] = {
            k: kept[k] for k in ("value", "ci_low", "ci_high", "kept", "eligible", "by_category")
        }
    atomic_write_json(out / "quickstart.json", summary)
    console.print(
        f"\naccuracy on held-out questions: base [red]{base_ok}/{len(rows)} ({base['value']:.0%})[/red] → "
        f"tuned [green]{tuned_ok}/{len(rows)} ({tuned['value']:.0%}, 95% CI {tuned['ci_low']:.0%}–"
        f"{tuned['ci_high']:.0%})[/green]   ({summary['minutes']} min)"
    )
    if "retention" in summary:
        console.print(
            f"what it kept of what the base knew: [bold]retention {kept['value']:.0%}[/bold] (95% CI "
            f"{kept['ci_low']:.0%}–{kept['ci_high']:.0%}): of the {kept['eligible']} general questions the base "
            f"answered acceptably, the tuned model still answers {kept['kept']}"
        )
        for lost in kept["regressions"][:3]:
            console.print(f"  lost: {lost['question']} → base: {lost['base'][:60]!r}, tuned: {lost['tuned'][:60]!r}",
                          markup=False, highlight=False)  # fmt: skip
    verdict = "a real difference" if versus["significant"] else "not a significant difference"
    console.print(f"tuned vs base: {versus['delta']:+.0%}, {versus.get('test', 'paired bootstrap')} "
                  f"p = {versus['p_value']:.2g} ({verdict}); report: {Path(result['output']) / 'report.html'}")  # fmt: skip
    console.print(f"the tuned model is in {out}\nchat with it:   lmtailor chat {QUICKSTART_MODEL}")
    return summary
