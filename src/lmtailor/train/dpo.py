"""`method: dpo`: preference tuning with TRL's DPOTrainer, on the same strategies, checkpoints and model
folder as SFT.

    run_dpo(spec)  preference rows (data/preference.py) → model and strategy (LoRA / full / freeze) →
                   DPOTrainer (the reference model: the base with adapters off for LoRA, a frozen copy
                   otherwise) → validation logs reward accuracy and margins → saved like SFT, with a card

Defaults where the spec leaves them: LoRA (a DPO reference model then costs no memory), beta 0.1, learning
rate 5e-5 for LoRA and 5e-7 for full or freeze (TRL's guidance for DPO: far below SFT's), 3 epochs, batch 8.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lmtailor.errors import DataError
from lmtailor.specs import TrainSpec

LEARNING_RATE = {"lora": 5e-5, "full": 5e-7, "freeze": 5e-7}


def run_dpo(spec: TrainSpec, home=None, log: Callable[[str], None] = print, progress: bool = True,
            callbacks: list | None = None) -> Path:  # fmt: skip
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from lmtailor.data.preference import load_preferences
    from lmtailor.data.split import split_records
    from lmtailor.train.sft import rows_record

    torch.manual_seed(spec.seed)
    train, _ = load_preferences(spec.data, spec.on_error)
    val = load_preferences(spec.val_data, spec.on_error)[0] if spec.val_data else []
    if not spec.val_data and spec.val_ratio > 0:
        parts = split_records(train, ratios=(1 - spec.val_ratio, spec.val_ratio, 0.0), seed=spec.seed)
        train, val = parts["train"], parts["val"]
    if not train:
        raise DataError(spec.data, None, "no usable preference rows")
    base, out, tok, device, precision, strategy, lr, model, trainable, total = setup(
        spec, home, LEARNING_RATE
    )
    epochs, batch = spec.epochs or 3, spec.batch_size or min(8, len(train))
    log(f"DPO on {spec.model} ({total / 1e6:.0f}M parameters), strategy {strategy}: {trainable / 1e6:.2f}M "
        f"trainable; {len(train)} preference rows, {len(val)} for validation; beta {spec.beta}, lr {lr:g}")  # fmt: skip

    def rows(prefs):
        return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in prefs]  # fmt: skip

    steps_per_epoch = max(1, -(-len(train) // (batch * spec.grad_accum)))
    eval_every = spec.eval_steps or steps_per_epoch
    args = DPOConfig(
        output_dir=str(out / "checkpoints"), beta=spec.beta, learning_rate=lr, num_train_epochs=epochs,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        gradient_accumulation_steps=spec.grad_accum, max_length=spec.max_length or 1024,
        lr_scheduler_type=spec.scheduler,
        warmup_steps=int(spec.warmup_ratio * steps_per_epoch * epochs), weight_decay=spec.weight_decay,
        logging_steps=max(1, min(10, steps_per_epoch // 2)), eval_strategy="steps" if val else "no",
        eval_steps=eval_every, save_strategy="steps", save_steps=spec.save_steps or max(steps_per_epoch, 10),
        save_total_limit=spec.save_total_limit, bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=device == "cpu", seed=spec.seed, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    train_rows = rows(train)
    record = rows_record(train_rows, spec, batch, max_length=args.max_length)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(train_rows),
                         eval_dataset=Dataset.from_list(rows(val)) if val else None, processing_class=tok)  # fmt: skip
    chosen = {"learning_rate": lr, "epochs": epochs, "batch_size": batch, "precision": precision}
    return train_and_save(trainer, spec, base, tok, out, "dpo", strategy, chosen, (len(train), len(val)),
                          (trainable, total), progress, callbacks, log, record, home)  # fmt: skip


def setup(spec: TrainSpec, home, rates: dict[str, float]):
    """What DPO and reinforcement runs load alike: base, output folder, tokenizer, device, precision, the
    strategy (auto: LoRA), the learning rate, and the model with its strategy applied."""
    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import best_device, load_model, load_tokenizer
    from lmtailor.train.sft import _precision, _weights_dtype, output_dir
    from lmtailor.train.strategy import apply_strategy, trainable_summary

    base = resolve(spec.model, home)
    out = output_dir(spec, home)
    tok = load_tokenizer(base, trust_remote_code=spec.trust_remote_code)
    device = best_device()
    precision = _precision(spec, device)
    strategy = "lora" if spec.strategy == "auto" else spec.strategy
    lr = (spec.learning_rate or rates[strategy]) * spec.learning_rate_multiplier
    model = load_model(base, dtype=_weights_dtype(strategy, precision), device=device,
                       trust_remote_code=spec.trust_remote_code)  # fmt: skip
    model = apply_strategy(model, spec, strategy, spec.freeze_modules)
    return (base, out, tok, device, precision, strategy, lr, model, *trainable_summary(model))


def train_and_save(trainer, spec: TrainSpec, base, tok, out: Path, method: str, strategy: str, chosen: dict,
                   rows: tuple[int, int], params: tuple[int, int], progress: bool, callbacks: list | None,
                   log: Callable[[str], None], record: dict, home=None) -> Path:  # fmt: skip
    """What DPO and reinforcement runs share with SFT's end: metrics.jsonl and the progress bar, resume from
    the newest complete checkpoint (sft.resume_point: if it trained the rows of `record`), a last validation, the
    folder saved as SFT saves it, the card."""
    from lmtailor.train.callbacks import MetricsCallback, ProgressCallback
    from lmtailor.train.sft import _save, resume_point

    out.mkdir(parents=True, exist_ok=True)
    resume = resume_point(out, spec.resume, record, log)
    if resume is None:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    for callback in [MetricsCallback(out / "metrics.jsonl"), ProgressCallback(progress), *(callbacks or [])]:
        trainer.add_callback(callback)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = {"train_loss": result.training_loss, "runtime_s": round(time.time() - t0, 1),
               "steps": trainer.state.global_step, "trainable_parameters": params[0], "total_parameters": params[1]}  # fmt: skip
    if rows[1]:
        metrics.update({k: v for k, v in trainer.evaluate().items() if k.startswith("eval_")
                        and "runtime" not in k and "per_second" not in k})  # fmt: skip
    _save(trainer.model, tok, out, strategy, spec.merge, base.path)
    if not spec.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    write_card(out, spec, base, method, strategy, chosen, rows[0], rows[1], metrics)
    log(f"saved {out}")
    if spec.retention:  # what it cost, as for SFT
        from lmtailor.train.sft import _free_memory, add_retention

        trainer.model = trainer.model_wrapped = None
        _free_memory()
        add_retention(spec, base, strategy, out, home, log)
    return out


def write_card(out: Path, spec: TrainSpec, base, method: str, strategy: str, chosen: dict, n_train: int, n_val: int,
               metrics: dict) -> None:  # fmt: skip
    """lmtailor.json of a DPO or reinforcement run, with the keys of SFT's card (train/sft.write_card)."""
    from lmtailor import __version__
    from lmtailor.home import atomic_write_json
    from lmtailor.train.sft import fingerprint

    parent, root = None, spec.model
    if base.card:  # tuning a tuned model further: its card names the first base
        parent, root = (
            {"path": str(base.path), "name": base.card.get("name")},
            base.card.get("base_model", spec.model),
        )
    hyper = {**spec.model_dump(exclude={"data", "val_data", "output", "name", "resume"}), **chosen,
             "strategy": strategy}  # fmt: skip
    atomic_write_json(out / "lmtailor.json", {
        "lmtailor_version": __version__, "name": out.name, "base_model": root, "base_path": str(base.path),
        "parent": parent, "method": method, "strategy": strategy,
        "adapter": "adapter" if strategy == "lora" else None, "hyperparameters": hyper, "defaults_chosen": {},
        "data": {"train": {**(fingerprint(spec.data) or {}), "rows": n_train}, "val": {"rows": n_val} if n_val else None},
        "metrics": metrics,
    })  # fmt: skip
