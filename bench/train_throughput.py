"""Training throughput: plain TRL SFTTrainer (its defaults, LoRA r16, as a user would write it) against
lmtailor's defaults, on the same data for the same number of epochs, in one script.

Reports tokens/s, peak memory (RSS) and final loss of both, their ratio, and the share of this CPU's
measured matmul peak (in the dtype lmtailor trains in: bf16 where the CPU computes it natively, else fp32) that
lmtailor's run reaches (model FLOPs per token: 2 x parameters forward, 2 x backward through activations, and
2 x the trained parameters for their weight gradients; counted over the tokens the model computed, which are
fewer than the data's where packed rows hold their samples' shared prefix once). tokens/s counts the data's tokens
on both sides. --plain-fp32 runs the plain side with bf16=False.

    python bench/train_throughput.py [--epochs 3] [--data FILE] [--rows N] [--repeats K] [--plain-fp32] [--json OUT]

With --repeats K the two runs alternate K times (plain, lmtailor, plain, lmtailor...) and the ratio is of the
medians (the lower middle run of an even count): this VM's speed drifts by up to 1.6x within an hour, and
alternating keeps a drift from landing on one side only. Peak memory is each side's first run.

By default the data is the quickstart's first 150 rows (its three original phrasings of each fact: the rows
the results in docs/benchmarks.md were measured on before the file grew to six phrasings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / "src" / "lmtailor" / "quickstart" / "data" / "train.jsonl"


class PeakRSS:
    """Samples this process's resident memory every 50 ms; `peak` is the most seen since start()."""

    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def matmul_peak_tflops(dtype, n: int = 2048, seconds: float = 3.0) -> float:
    """Square matmuls in the dtype lmtailor trains in here (bf16 where the CPU has it, else fp32)."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e12


def plain_trl(model_dir: Path, data: Path, epochs: float, out: Path, fp32: bool = False) -> dict:
    """What a user writes from TRL's docs: SFTTrainer on the chat rows, a peft LoRA, TRL's defaults.

    Those include bf16 autocast over fp32 weights: TRL 1.16's SFTConfig turns `bf16` on unless fp16 is set
    (not fp32, as the issue assumed); the row's strategy says which precision ran. `fp32`: `bf16=False`."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    ds = load_dataset("json", data_files=str(data), split="train").select_columns(["messages"])
    args = SFTConfig(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=2e-4,
        logging_steps=5, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", assistant_only_loss=False, **({"bf16": False} if fp32 else {}),
    )  # fmt: skip
    peft = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(model_dir), args=args, train_dataset=ds, peft_config=peft)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {"seconds": seconds, "tokens": trainer.state.num_input_tokens_seen, "final_loss": losses[-1],
            "train_loss": result.training_loss,
            "strategy": f"lora r16 ({'bf16 autocast' if args.bf16 else 'fp32'})"}  # fmt: skip


def lmtailor_defaults(model_dir: Path, data: Path, epochs: float, out: Path) -> dict:
    from lmtailor.specs import TrainSpec
    from lmtailor.train.callbacks import read_metrics
    from lmtailor.train.sft import run_sft

    # recite=False: both sides train the same rows (the defaults would add recitations to fact data), so
    # tokens/s and final loss compare the training paths, not the data.
    spec = TrainSpec(model=str(model_dir), data=str(data), output=str(out), epochs=epochs, recite=False)
    t0 = time.perf_counter()
    run_sft(spec, progress=False, log=lambda *a: None)
    seconds = time.perf_counter() - t0
    card = json.loads((out / "lmtailor.json").read_text())
    rows = read_metrics(out / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    train_seconds = card["metrics"]["runtime_s"]
    return {"seconds": train_seconds, "wall_seconds": seconds, "tokens": rows[-1]["tokens_seen"],
            "final_loss": losses[-1], "train_loss": card["metrics"]["train_loss"],
            "strategy": f"{card['strategy']} ({card['hyperparameters']['precision']})",
            "trained_fraction": card["metrics"]["trainable_parameters"] / card["metrics"]["total_parameters"],
            "computed_tokens": card["metrics"].get("computed_tokens") or rows[-1]["tokens_seen"]}  # fmt: skip


def median_run(runs: list[dict]) -> dict:
    """The run with the median tokens/s (the lower middle one of an even count): a whole run, so its time,
    tokens and loss belong together."""
    return sorted(runs, key=lambda r: r["tokens_per_second"])[(len(runs) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, default=150, help="train on the first N rows of the data (0: all)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two runs this many times; medians")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--plain-fp32", action="store_true", help="plain TRL with bf16=False instead of its default"
    )
    a = ap.parse_args()
    rows = a.data.read_text(encoding="utf-8").splitlines(keepends=True)[: a.rows or None]
    if len(rows) * a.epochs < 40:  # else the plain side logs no loss to compare
        ap.error(f"{len(rows)} rows x --epochs {a.epochs:g} is under 40 rows trained: plain TRL logs its loss "
                 "every 5 steps of 8 rows")  # fmt: skip

    import torch

    from lmtailor.models.catalog import embedded_folder

    model_dir = embedded_folder()
    from lmtailor.models.loading import _count_parameters
    from lmtailor.specs import TrainSpec
    from lmtailor.train.core import compute_precision

    n_params = _count_parameters(model_dir)
    # The precision lmtailor's side trains in, decided where run_sft decides it: bf16 or fp32 on a CPU.
    kind = compute_precision(TrainSpec(model=str(model_dir), data=str(a.data)), "cpu")
    peak = matmul_peak_tflops({"bf16": torch.bfloat16, "fp32": torch.float32}[kind])
    runs: dict[str, list[dict]] = {"plain TRL": [], "lmtailor": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if a.rows:
            data = Path(tmp) / "rows.jsonl"
            data.write_text("".join(rows), encoding="utf-8")
        for k in range(max(1, a.repeats)):
            for name, fn in (
                ("plain TRL", partial(plain_trl, fp32=a.plain_fp32)),
                ("lmtailor", lmtailor_defaults),
            ):
                with PeakRSS() as mem:
                    r = fn(model_dir, data, a.epochs, Path(tmp) / f"{name.replace(' ', '_')}_{k}")
                r["tokens_per_second"] = r["tokens"] / r["seconds"]
                r["peak_rss_gb"] = mem.peak / 2**30
                runs[name].append(r)
                print(
                    f"{name:10s} {r['strategy']:18s} {r['tokens_per_second']:7.1f} tok/s  peak "
                    f"{r['peak_rss_gb']:.2f} GiB  final loss {r['final_loss']:.3f}  ({r['seconds']:.0f} s)",
                    flush=True,
                )
    # Peak memory from each side's first run: later runs in the same process start from what earlier ones left.
    results = {name: {**median_run(rs), "peak_rss_gb": rs[0]["peak_rss_gb"]} for name, rs in runs.items()}
    ours, base = results["lmtailor"], results["plain TRL"]
    per_token = 4 + 2 * ours["trained_fraction"]
    # FLOPs of the tokens the model computed: a row holds its samples' shared prefix once (train/collate.py).
    achieved = per_token * n_params * ours["computed_tokens"] / ours["seconds"] / 1e12
    summary = {
        # the cores this process may run on (taskset), not the machine's: a pinned run on a big host reads 2
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
        "epochs": a.epochs,
        "matmul_dtype": kind,
        "matmul_peak_tflops": round(peak, 3),
        "speedup_tokens_per_second": round(ours["tokens_per_second"] / base["tokens_per_second"], 2),
        "lmtailor_model_tflops": round(achieved, 3),
        "lmtailor_fraction_of_peak": round(achieved / peak, 3),
        "runs": results,
        "repeats": {name: [round(r["tokens_per_second"], 1) for r in rs] for name, rs in runs.items()},
    }
    print(
        f"\n{kind} matmul peak {peak:.2f} TFLOP/s; lmtailor reaches {achieved:.3f} TFLOP/s "
        f"({achieved / peak:.1%} of it, {per_token:.2f} x params FLOPs per token)"
    )
    if a.repeats > 1:
        print("tokens/s of each run: " + "; ".join(f"{n} {v}" for n, v in summary["repeats"].items()))
    print(
        f"speed-up: {summary['speedup_tokens_per_second']}x tokens/s; final loss {ours['final_loss']:.3f} "
        f"(lmtailor) vs {base['final_loss']:.3f} (plain TRL)"
    )
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
