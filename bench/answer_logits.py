"""The LM head on the trained positions only (AnswerLogitsTrainer) against the whole row, in one process.

Forward and backward of lmtailor's default training step (the embedded model, MLP blocks trained, bf16
autocast, packed rows of the quickstart's data with recitations) with the head and the cross-entropy over
every position (transformers' ordinary path) and over the positions whose next token is trained; the two
alternate batch by batch so that the machine's drift hits both alike. Reports seconds a step, the ratio and
the largest loss difference.

    python bench/answer_logits.py [--steps 12] [--data FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / "src" / "lmtailor" / "quickstart" / "data" / "train.jsonl"


def batches(tok, data: Path, steps: int) -> list[dict]:
    """`steps` packed rows of about 8 samples each, the quickstart's questions and their recitations."""
    from datasets import Dataset
    from trl import pack_dataset

    from lmtailor.data.augment import recitations
    from lmtailor.data.formats import load_records
    from lmtailor.data.tokenize import tokenize_records
    from lmtailor.train.collate import PackedCollator

    records = load_records(data).records
    examples, _ = tokenize_records(tok, records + recitations(records), 2048)
    width = 8 * sum(len(e["input_ids"]) for e in examples) // len(examples)
    rows = pack_dataset(Dataset.from_list(examples), width, "bfd").to_list()
    collate = PackedCollator(tok.pad_token_id)
    return [collate([rows[i % len(rows)]]) for i in range(steps)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    a = ap.parse_args()

    import torch
    from transformers import TrainingArguments

    from lmtailor.models.catalog import embedded_folder
    from lmtailor.models.loading import load_model, load_tokenizer
    from lmtailor.specs import TrainSpec
    from lmtailor.train.collate import IGNORE
    from lmtailor.train.strategy import apply_strategy
    from lmtailor.train.trainer import AnswerLogitsTrainer

    folder = embedded_folder()
    tok = load_tokenizer(str(folder))
    model = load_model(str(folder), dtype=torch.float32, device="cpu")
    model = apply_strategy(model, TrainSpec(model=str(folder), data=str(a.data)), "freeze", ["mlp"])
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, use_cpu=True, report_to="none", bf16=True)
        trainer = AnswerLogitsTrainer(model=model, args=args)
    times: dict[bool, list[float]] = {False: [], True: []}
    diffs = []
    for i, batch in enumerate(batches(tok, a.data, a.steps + 1)):
        n = (torch.nn.functional.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:] != IGNORE).sum()
        losses = {}
        for trim in (i % 2 == 0, i % 2 == 1):  # which goes first alternates
            trainer.trim_logits = trim
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
            loss.backward()
            if i:  # the first batch warms both paths up
                times[trim].append(time.perf_counter() - t0)
            losses[trim] = loss.item()
        diffs.append(abs(losses[True] - losses[False]))
    full, trimmed = statistics.median(times[False]), statistics.median(times[True])
    tokens = batch["input_ids"].numel()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )
    print(
        f"packed rows of about {tokens} tokens; {a.steps} steps each, median seconds a step (forward + backward)"
    )
    print(f"whole row     {full:.3f} s")
    print(f"trained only  {trimmed:.3f} s")
    print(f"ratio {full / trimmed:.2f}x; largest loss difference {max(diffs):.2e}")


if __name__ == "__main__":
    main()
