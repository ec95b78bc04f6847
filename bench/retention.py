"""Both sides of tuning: every data set x every rule x every seed, the held-out target metric and retention (the
share of the bundled general probes the base answered that the tuned model still answers), with training time.

Data sets: `quickstart` (facts about a made-up company, English and Chinese, held-out phrasings), `tickets`
(a 4-queue ticket router, bench/classification_task.py's templates: test wordings never trained) and `zh-facts`
(facts about a made-up museum, in Chinese: bench/data/zh-facts, 120 rows, 30 held-out phrasings); more as
`--dataset NAME=TRAIN.jsonl,TEST.jsonl`. Rules: `today` (the default rule before 2026-12-07: no replay, so
recitations where the rule picks them) and `new` (the rule as it is: replay of the base's own answers at 0.2, no
recitations, about 150 steps over the user's and replay's rows together; since 2026-12-08 LoRA at 2e-3 where it
replays: the `new` rows of docs/defaults.md, measured before, are the MLP blocks at 3e-4, and `lora-lr2e3` is the
rule as it is now); more as `--rule NAME=key:value,...`
(TrainSpec keys). docs/defaults.md also reports `replay-v1`, the first replay rule (commit c37d7ce: its epochs
counted over the user's rows only, so replay's rows added steps), run with that commit's code. Each run trains with `run_sft` and evaluates base vs tuned with `run_eval` in this one process, one run at a
time (two trainings at once on 2 cores fight over the threads). Results go to WORKDIR/results.jsonl as each run
ends, and a run already there is not run again (nor a model already trained), so a killed bench continues where
it stopped. Training time is the Trainer's (the card's runtime_s): replay's generation and retention come on top.

    python bench/retention.py [--dataset quickstart] [--rule today --rule new] [--seeds 42,1,2] [--workdir D]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lmtailor.home import atomic_write_text  # noqa: E402

RULES: dict[str, dict] = {
    "today": {"replay_ratio": 0.0},  # the rule before 2026-12-07: no replay, recitations where it picks them
    "new": {},  # the rule as it is: replay, no recitations
}


def quickstart_files(work: Path) -> tuple[Path, Path]:
    from importlib import resources

    src = resources.files("lmtailor.quickstart") / "data"
    return Path(str(src / "train.jsonl")), Path(str(src / "test.jsonl"))


def tickets_files(work: Path) -> tuple[Path, Path]:
    from classification_task import make_rows

    rng = random.Random(0)
    out = []
    for name, rows in (("train", make_rows(240, False, rng)), ("test", make_rows(80, True, rng))):
        path = work / "data" / f"tickets-{name}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out.append(path)
    return out[0], out[1]


def zh_facts_files(work: Path) -> tuple[Path, Path]:
    src = Path(__file__).resolve().parent / "data" / "zh-facts"
    return src / "train.jsonl", src / "test.jsonl"


BUILT_IN = {"quickstart": quickstart_files, "tickets": tickets_files, "zh-facts": zh_facts_files}


def parse_rule(text: str) -> tuple[str, dict]:
    name, _, body = text.partition("=")
    if name in RULES and not body:
        return name, RULES[name]
    keys = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        keys[key] = json.loads(value) if value[:1] in '-0123456789[{tf"n' else value
    return name, keys


def one_run(dataset: str, train: Path, test: Path, rule: str, keys: dict, seed: int, work: Path) -> dict:
    from lmtailor.evaluate.runner import run_eval
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.models.catalog import EMBEDDED
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    out = work / "models" / f"{dataset}-{rule}-s{seed}"
    spec = TrainSpec(model=EMBEDDED, data=str(train), output=str(out), seed=seed, **keys)
    wall = None
    if not (
        out / "lmtailor.json"
    ).exists():  # a model already trained (a killed bench's) is not trained again
        t0 = time.time()
        run_sft(spec, home=work / "home", progress=False, log=lambda line: print(f"  {line}", flush=True))
        wall = round(time.time() - t0, 1)  # with replay's generation and the retention probes
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    trained = card["metrics"]["runtime_s"]
    result = run_eval(EvalSpec(models=[EMBEDDED, str(out)], data=str(test), max_new_tokens=96,
                               output=str(work / "evals" / out.name)), home=work / "home", log=lambda _: None)  # fmt: skip
    base, tuned = result["models"]
    metric = result["metrics"][0] if "f1" not in result["metrics"] else "f1"
    return {
        "dataset": dataset, "rule": rule, "seed": seed, "keys": keys, "metric": metric,
        "base_metric": base["scores"][metric]["value"], "tuned_metric": tuned["scores"][metric]["value"],
        **retention_fields(tuned.get("retention") or {}),
        "train_s": trained, "run_s": wall, "steps": card["metrics"]["steps"], "train_loss": card["metrics"]["train_loss"],
        "replay_ratio": card["hyperparameters"].get("replay_ratio"),
    }  # fmt: skip


def rescore(result: dict, work: Path) -> dict:
    """The result's retention again from its models' cached answers, under the probe rules of today's code (a
    result kept from before a rule changed would otherwise be compared with newer ones)."""
    from lmtailor.evaluate.retention import measure
    from lmtailor.models.catalog import EMBEDDED

    out = work / "models" / f"{result['dataset']}-{result['rule']}-s{result['seed']}"
    kept = measure(EMBEDDED, str(out), home=work / "home", log=lambda _: None)
    return {**result, **retention_fields(kept), "probes_version": kept["probes_version"]}


def retention_fields(kept: dict) -> dict:
    """A result's retention columns from a retention report (empty: a run that measured none)."""
    return {
        "retention": kept.get("value"), "retention_ci": [kept.get("ci_low"), kept.get("ci_high")],
        "retention_by_category": {k: v["value"] for k, v in (kept.get("by_category") or {}).items()},
        "kept": kept.get("kept"), "eligible": kept.get("eligible"),
    }  # fmt: skip


def table(results: list[dict]) -> str:
    lines = ["| data set | rule | seed | target metric | retention [95% CI] | by category | training |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        cats = ", ".join(f"{k} {v:.0%}" for k, v in r["retention_by_category"].items())
        kept = "–" if r["retention"] is None else (
            f"{r['retention']:.0%} [{r['retention_ci'][0]:.0%}, {r['retention_ci'][1]:.0%}] ({r['kept']}/{r['eligible']})")  # fmt: skip
        lines.append(f"| {r['dataset']} | {r['rule']} | {r['seed']} | {r['metric']} {r['base_metric']:.2f} → "
                     f"{r['tuned_metric']:.2f} | {kept} | {cats} | {r['train_s']:.0f} s, {r['steps']} steps |")  # fmt: skip
    means: dict[tuple, list] = {}
    for r in results:
        means.setdefault((r["dataset"], r["rule"]), []).append(r)
    lines += ["", "| data set | rule | seeds | target metric (mean) | retention (mean) | training (mean) |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for (dataset, rule), rs in means.items():
        kept = [r["retention"] for r in rs if r["retention"] is not None]
        lines.append(f"| {dataset} | {rule} | {len(rs)} | {sum(r['tuned_metric'] for r in rs) / len(rs):.3f} | "
                     f"{(sum(kept) / len(kept)) if kept else float('nan'):.1%} | {sum(r['train_s'] for r in rs) / len(rs):.0f} s |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", action="append", help="quickstart | tickets | NAME=TRAIN,TEST (repeat)")
    ap.add_argument("--rule", action="append", help="today | new | NAME=key:value,... (repeat)")
    ap.add_argument("--seeds", default="42,1,2")
    ap.add_argument("--workdir", default="retention-run")
    ap.add_argument(
        "--rescore", action="store_true", help="recompute every kept result's retention from the cache"
    )
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    done_file = work / "results.jsonl"
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    rules = [parse_rule(r) for r in (args.rule or ["today", "new"])]
    for item in args.dataset or ["quickstart"]:
        name, _, files = item.partition("=")
        train, test = (Path(p) for p in files.split(",")) if files else BUILT_IN[name](work)
        for rule, keys in rules:
            for seed in (int(s) for s in args.seeds.split(",")):
                if any((r["dataset"], r["rule"], r["seed"]) == (name, rule, seed) for r in done):
                    continue
                print(f"== {name} / {rule} {keys} / seed {seed}", flush=True)
                done.append(one_run(name, train, test, rule, keys, seed, work))
                with done_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(done[-1]) + "\n")
    if args.rescore:
        done = [rescore(r, work) for r in done]
        atomic_write_text(done_file, "".join(json.dumps(r) + "\n" for r in done))
    import torch

    print(f"\nmachine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"torch {torch.__version__}\n")  # fmt: skip
    print(table(done))


if __name__ == "__main__":
    main()
