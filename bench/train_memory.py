"""The train form's memory estimate (train/memory.py) against the memory a real run takes, per strategy.

For each strategy, a child process trains the embedded model for a few steps of batch rows of exactly
max_length tokens (rows longer than that, truncated; no packing, which would merge the steps into one) and reports its peak resident memory above what it held before loading the model (torch and
transformers imported); the estimate for the same settings is printed beside it, with the ratio.

    python bench/train_memory.py [--batch 4] [--max-length 256] [--strategies lora,mlp,full]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
from pathlib import Path
import torch, transformers  # noqa: F401  (counted in the baseline, as in a job process)
from lmtailor.specs import TrainSpec
from lmtailor.train.sft import run_sft

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

args = json.loads(sys.argv[1])
before = rss()
mlp = args["strategy"] == "mlp"  # the MLP blocks alone: `freeze` with freeze_modules [mlp]
spec = TrainSpec(model="smollm2-135m-instruct", data=args["data"], output=args["out"],
                 strategy="freeze" if mlp else args["strategy"], freeze_modules=["mlp"] if mlp else None, epochs=1,
                 batch_size=args["batch"], max_length=args["max_length"], packing=False, lora_r=32, neftune_alpha=0,
                 replay_ratio=0)
run_sft(spec, progress=False, log=lambda line: None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT", json.dumps({"before": before, "peak": peak}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--strategies", default="lora,mlp,full")
    args = ap.parse_args()

    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import describe
    from lmtailor.train.memory import estimate

    folder = resolve("smollm2-135m-instruct").path
    params = describe("smollm2-135m-instruct")["parameters"]
    work = Path(tempfile.mkdtemp(prefix="train-memory-"))
    # rows longer than max_length, truncated to it: every step carries batch x max_length tokens
    text = " ".join(f"word{i}" for i in range(args.max_length))
    rows = [{"messages": [{"role": "user", "content": "Repeat."}, {"role": "assistant", "content": text}]}]
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * (args.batch * args.steps)), encoding="utf-8")
    print(
        f"smollm2-135m-instruct, batch {args.batch} x {args.max_length} tokens, {args.steps} steps, bf16 where native"
    )
    print(f"{'strategy':10} {'estimate':>10} {'measured':>10} {'ratio':>6}")
    for strategy in args.strategies.split(","):
        child = {"data": str(data), "out": str(work / strategy), "strategy": strategy, "batch": args.batch,
                 "max_length": args.max_length}  # fmt: skip
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{strategy}: the training child failed:\n{out.stderr[-2000:]}")
        got = json.loads(line[7:])
        measured = got["peak"] - got["before"]
        guess = estimate(folder, strategy, args.batch, args.max_length, 32, parameters=params)["total"]
        print(
            f"{strategy:10} {guess / 2**30:9.2f}G {measured / 2**30:9.2f}G {guess / measured:6.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
