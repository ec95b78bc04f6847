"""Training time of two rules on the same data, alternating in one script: the MLP blocks at 3e-4 (the rule
without replay) against LoRA rank 32 at 2e-3 (the rule with replay), both with the default replay, for a fraction
of an epoch each, `--repeats` times (the VM's speed drifts within an hour: alternating keeps a drift off one side).

    python bench/rule_step.py [--epochs 0.6] [--repeats 2] [--precision fp32] [--rule NAME=FLAGS ...]

Prints each run's Trainer runtime (lmtailor.json's runtime_s) and the ratio of the medians to the first rule's.
Each run is `lmtailor train` in its own process, one at a time (two at once fight over the cores), in one home
(replay's answers generated once). --precision fp32 times a CPU without bf16 on one that has it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "src" / "lmtailor" / "quickstart" / "data" / "train.jsonl"
RULES = {
    "mlp": "--strategy freeze --freeze-modules mlp --learning-rate 3e-4",
    "lora": "--strategy lora --learning-rate 2e-3",
}


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--epochs", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--rule", action="append", default=[], help="NAME=FLAGS, more rules to time beside these")
    args = ap.parse_args()
    rules = dict(RULES, **dict(r.split("=", 1) for r in args.rule))
    times: dict[str, list[float]] = {name: [] for name in rules}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.repeats):
            for name, flags in rules.items():
                out = Path(work) / name
                cmd = [sys.executable, "-c", "from lmtailor.cli import app; app()", "train", "--data", args.data, "--epochs",
                       str(args.epochs), "--no-retention", "--precision", args.precision, "--home", work,
                       "-o", str(out), *shlex.split(flags)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{name}: training failed:\n{done.stderr[-2000:]}")
                card = json.loads((out / "lmtailor.json").read_text())
                times[name].append(card["metrics"]["runtime_s"])
                print(f"round {round_ + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    print(f"\n{cpu()}, precision {args.precision}, {args.epochs} epoch each")
    first = statistics.median(times[next(iter(rules))])
    for name, ts in times.items():
        print(f"{name:12} median {statistics.median(ts):7.1f} s  ratio {statistics.median(ts) / first:.2f}")


if __name__ == "__main__":
    main()
