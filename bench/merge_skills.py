"""Two models tuned on different fact sets, merged: does the merged model answer both sets?

The quickstart's facts about Orvane Robotics are split in two halves by fact. Model A is tuned on the
first half, model B on the second (lmtailor's defaults, the embedded model); then `lmtailor merge` makes one
model of them with each method asked for. `lmtailor eval` asks every model the held-out rephrasings of
both halves (metric: contains). A merge that works answers both halves better than either parent alone.

    python bench/merge_skills.py [--workdir merge-skills-run] [--methods ties,task_arithmetic,linear]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def split_by_fact(train: list[dict], test: list[dict]) -> tuple[list, list, list, list]:
    """Halves of the test questions by position; each training row goes with the fact whose answer it holds."""
    half = len(test) // 2
    facts_a, facts_b = test[:half], test[half:]
    train_a, train_b = [], []
    for row in train:
        answer = row["messages"][-1]["content"].lower()
        if any(f["reference"].lower() in answer for f in facts_a):
            train_a.append(row)
        elif any(f["reference"].lower() in answer for f in facts_b):
            train_b.append(row)
    return train_a, train_b, facts_a, facts_b


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="merge-skills-run")
    ap.add_argument("--methods", default="ties,task_arithmetic,linear")
    args = ap.parse_args()

    from lmtailor.evaluate.runner import run_eval
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.merge.run import run_merge
    from lmtailor.quickstart.run import sample_files
    from lmtailor.specs import MergeSpec, TrainSpec
    from lmtailor.train.sft import run_sft

    work = Path(args.workdir).resolve()
    home = work / "home"
    work.mkdir(parents=True, exist_ok=True)
    train_file, test_file = sample_files(home)
    load = lambda p: [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]  # noqa: E731
    train_a, train_b, test_a, test_b = split_by_fact(load(train_file), load(test_file))
    print(
        f"set A: {len(train_a)} training rows, {len(test_a)} questions; set B: {len(train_b)}, {len(test_b)}"
    )
    models = {}
    for name, rows in (("tuned-a", train_a), ("tuned-b", train_b)):
        out = work / name
        if not (out / "lmtailor.json").exists():
            t0 = time.time()
            run_sft(TrainSpec(model="smollm2-135m-instruct", data=str(write(work / f"{name}.jsonl", rows)),
                              output=str(out)), home=home, progress=False, log=lambda line: None)  # fmt: skip
            print(f"{name}: trained in {time.time() - t0:.0f} s", flush=True)
        models[name] = str(out)
    for method in args.methods.split(","):
        out = work / f"merged-{method}"
        if not (out / "lmtailor.json").exists():
            t0 = time.time()
            weights = [1.0, 1.0] if method != "linear" else None
            run_merge(MergeSpec(models=[models["tuned-a"], models["tuned-b"]], method=method, weights=weights,
                                output=str(out)), home=home, log=lambda line: None)  # fmt: skip
            print(f"merged with {method} in {time.time() - t0:.0f} s", flush=True)
        models[f"merged-{method}"] = str(out)
    names = ["smollm2-135m-instruct", *models.values()]
    scores = {}
    for label, rows in (("A", test_a), ("B", test_b)):
        spec = EvalSpec(models=names, data=str(write(work / f"test-{label}.jsonl", rows)), metrics=["contains"],
                        max_new_tokens=96, output=str(work / f"eval-{label}"))  # fmt: skip
        result = run_eval(spec, home=home, log=lambda line: None)
        scores[label] = {m["name"]: m["scores"]["contains"] for m in result["models"]}
    print(f"\n{'model':40} {'set A':>18} {'set B':>18} {'both':>6}")
    for name in names:
        a, b = scores["A"][name], scores["B"][name]
        cell = lambda s: f"{s['value']:.2f} [{s['ci_low']:.2f},{s['ci_high']:.2f}]"  # noqa: E731
        both = (a["value"] * len(test_a) + b["value"] * len(test_b)) / (len(test_a) + len(test_b))
        print(f"{Path(name).name:40} {cell(a):>18} {cell(b):>18} {both:6.2f}")


if __name__ == "__main__":
    main()
