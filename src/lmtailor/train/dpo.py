"""`method: dpo`: preference tuning with TRL's DPOTrainer, on the same strategies, checkpoints and model
folder as SFT.

    run(spec)  preference rows (data/preference.py) → model and strategy (LoRA / full / freeze) → DPOTrainer
               (the reference model: the base with adapters off for LoRA, a frozen copy otherwise) → validation
               logs reward accuracy and margins; keep_best and early stopping watch its loss → core.train, core.save

Defaults where the spec leaves them: LoRA (a DPO reference model then costs no memory), beta 0.1, learning
rate 5e-5 for LoRA and 5e-7 for full or freeze (TRL's guidance for DPO: far below SFT's), 3 epochs, batch 8.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lmtailor.errors import DataError
from lmtailor.specs import TrainSpec
from lmtailor.train import core

LEARNING_RATE = {"lora": 5e-5, "full": 5e-7, "freeze": 5e-7}


def run(spec: TrainSpec, home=None, progress: bool = True, log: Callable[[str], None] = print,
        callbacks: list | None = None) -> Path:  # fmt: skip
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from lmtailor.data.preference import load_preferences
    from lmtailor.train.strategy import trainable_summary

    torch.manual_seed(spec.seed)
    load = lambda path: load_preferences(path, spec.on_error)[0]  # noqa: E731
    train, val = core.split(spec, load(spec.data), load)
    if not train:
        raise DataError(spec.data, None, "no usable preference rows")
    run = core.start(spec, home, log)
    model, strategy, lr = core.load_policy(run, LEARNING_RATE)
    trainable, total = trainable_summary(model)
    epochs, batch = spec.epochs or 3, spec.batch_size or min(8, len(train))
    log(f"DPO on {spec.model} ({total / 1e6:.0f}M parameters), strategy {strategy}: {trainable / 1e6:.2f}M "
        f"trainable; {len(train)} preference rows, {len(val)} for validation; beta {spec.beta}, lr {lr:g}")  # fmt: skip
    args = core.training_args(DPOConfig, run, learning_rate=lr, epochs=epochs, per_device=batch,
                              steps_per_epoch=max(1, -(-len(train) // (batch * spec.grad_accum))), has_val=bool(val),
                              beta=spec.beta, max_length=spec.max_length or 1024)  # fmt: skip
    train_rows = rows(train)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(rows(val)) if val else None, processing_class=run.tok,
                         callbacks=core.callbacks(run, progress, bool(val)))  # fmt: skip
    record = core.rows_record(train_rows, spec, batch, max_length=args.max_length)
    metrics = core.train(run, trainer, record, callbacks)
    metrics.update({"trainable_parameters": trainable, "total_parameters": total})
    card = {"hyperparameters": {"learning_rate": lr, "epochs": epochs, "batch_size": batch}, "metrics": metrics,
            "why": {}, "data": core.data_card(spec, len(train), len(val))}  # fmt: skip
    return core.save(run, trainer, strategy, card)


def rows(prefs) -> list[dict]:
    """Preference rows as DPOTrainer reads them: the prompt's messages, each answer as an assistant turn."""
    return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in prefs]  # fmt: skip
