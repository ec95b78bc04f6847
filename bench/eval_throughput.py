"""Evaluation throughput: lmtailor's batched generation (length-sorted batches, left padding) against a
one-row-at-a-time loop over the same model, rows and greedy settings.

Reports rows/s of both, their ratio, and whether the answers agree (greedy decoding should give the same
text; small differences come from padding changing fp rounding in bf16).

    python bench/eval_throughput.py [--model smollm2-135m-instruct] [--data FILE] [--rows 48]
                                    [--batch-size 16] [--max-new-tokens 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / "src" / "lmtailor" / "quickstart" / "data" / "test.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    import torch

    from lmtailor.evaluate.answers import load_rows
    from lmtailor.evaluate.generate import generate
    from lmtailor.models.loading import load_model, load_tokenizer

    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = load_rows(args.data)
    rows = (rows * (args.rows // len(rows) + 1))[: args.rows]
    prompts = [r.prompt for r in rows]
    tok, model = load_tokenizer(args.model), load_model(args.model)
    generate(model, tok, prompts[:2], max_new_tokens=4)  # warm-up

    t0 = time.perf_counter()
    batched = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [generate(model, tok, [p], max_new_tokens=args.max_new_tokens, batch_size=1)[0] for p in prompts]
    t_single = time.perf_counter() - t0

    result = {
        "model": args.model,
        "rows": len(rows),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "dtype": str(model.dtype),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "batched_rows_per_s": round(len(rows) / t_batched, 2),
        "single_rows_per_s": round(len(rows) / t_single, 2),
        "speedup": round(t_single / t_batched, 2),
        "same_answers": sum(a == b for a, b in zip(batched, single, strict=True)) / len(rows),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
