"""What every training method does alike; each method (supervised.py, dpo.py, rft.py) brings its rows, its trainer
and its loss, and imports this module, never another method's.

    start(spec)          base resolved, output folder, tokenizer, device, precision
    split(spec, rows)    validation: the val_data file's rows, else `val_ratio` of the training rows
    training_args(...)   TrainingArguments (or TRL's DPOConfig / GRPOConfig): schedule, validation, checkpoints,
                         keep-best and early stopping, precision, processes
    callbacks(...)       metrics.jsonl, the progress bar, early stopping
    train(run, trainer)  resume from the newest checkpoint that trained the same rows, metrics.jsonl kept up to it,
                         train, a last validation
    save(run, trainer)   weights (adapter / merged / full), loss.png, the card (lmtailor.json) last
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtailor.errors import LmtailorError
from lmtailor.home import atomic_write_json, home_dir
from lmtailor.specs import TrainSpec

ROWS_FILE = "rows.json"  # in checkpoints/: what the run trains on, to check a resume against


@dataclass
class Run:
    """What a run loads before its method builds the trainer, and what the shared end needs."""

    spec: TrainSpec
    home: str | Path | None
    base: Any  # models.catalog.Resolved: path, and the card of a tuned model
    out: Path
    tok: Any
    device: str
    precision: str
    log: Callable


def start(spec: TrainSpec, home, log: Callable) -> Run:
    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import best_device, load_tokenizer

    base = resolve(spec.model, home)
    out = output_dir(spec, home)
    tok = load_tokenizer(base, trust_remote_code=spec.trust_remote_code)
    device = best_device()
    return Run(spec, home, base, out, tok, device, compute_precision(spec, device), log)


def load_weights(run: Run, strategy: str):
    """The base to train: in 4-bit for QLoRA, else in the dtype the strategy keeps its frozen weights in."""
    from lmtailor.models.loading import load_model

    spec = run.spec
    if strategy == "qlora":
        return load_4bit(run.base, run.precision, spec.trust_remote_code)
    return load_model(run.base, dtype=weights_dtype(strategy, run.precision), device=run.device,
                      trust_remote_code=spec.trust_remote_code)  # fmt: skip


def load_policy(run: Run, rates: dict[str, float]):
    """DPO's and reinforcement's model: strategy auto is LoRA (a reference model is then the base with the adapters
    off, at no memory), the learning rate the method's for the strategy (`rates`) unless given. Returns the model
    with its strategy applied, the strategy and the learning rate."""
    from lmtailor.train.strategy import apply_strategy

    spec = run.spec
    strategy = "lora" if spec.strategy == "auto" else spec.strategy
    lr = (spec.learning_rate or rates[strategy]) * spec.learning_rate_multiplier
    model = apply_strategy(load_weights(run, strategy), spec, strategy, spec.freeze_modules)
    return model, strategy, lr


def split(spec: TrainSpec, train: list, load: Callable[[str], list]) -> tuple[list, list]:
    """The training and validation rows: the val_data file's (read by `load`), else `val_ratio` of the training
    rows held out by a split seeded with the run's seed."""
    from lmtailor.data.split import split_records

    if spec.val_data:
        return train, load(spec.val_data)
    if spec.val_ratio > 0:
        parts = split_records(train, ratios=(1 - spec.val_ratio, spec.val_ratio, 0.0), seed=spec.seed)
        return parts["train"], parts["val"]
    return train, []


def training_args(config, run: Run, *, learning_rate: float, epochs: float, per_device: int,
                  steps_per_epoch: int, has_val: bool, **method):  # fmt: skip
    """`config` (transformers' TrainingArguments, TRL's DPOConfig or GRPOConfig) with what every method sets alike;
    `method`: what its trainer adds or sets otherwise. Validation every `eval_steps` (default: each epoch);
    checkpoints at the validations when keep_best or early stopping watch them, else every `save_steps`
    (default: about 3 a run, on epoch ends: a full model's checkpoint holds its optimizer state, 12 bytes a
    parameter)."""
    spec = run.spec
    best = bool(has_val and (spec.keep_best or spec.early_stopping_patience))
    metric = best_metric(spec)
    eval_every = spec.eval_steps or steps_per_epoch
    total_steps = math.ceil(steps_per_epoch * epochs)
    default_save = steps_per_epoch * max(1, math.ceil(total_steps / steps_per_epoch / 3))
    common = dict(
        output_dir=str(run.out / "checkpoints"), learning_rate=learning_rate, num_train_epochs=epochs,
        per_device_train_batch_size=per_device, per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=spec.grad_accum,
        warmup_steps=int(spec.warmup_ratio * total_steps),  # floored: a 1-step run must not spend it at lr 0
        lr_scheduler_type=spec.scheduler, weight_decay=spec.weight_decay, seed=spec.seed, data_seed=spec.seed,
        bf16=run.precision == "bf16", fp16=run.precision == "fp16",
        logging_steps=max(1, min(10, steps_per_epoch // 2)),
        eval_strategy="steps" if has_val else "no", eval_steps=eval_every if has_val else None,
        save_strategy="steps", save_steps=eval_every if best else (spec.save_steps or default_save),
        save_total_limit=spec.save_total_limit, load_best_model_at_end=best, metric_for_best_model=metric,
        greater_is_better=metric not in ("eval_loss", "eval_perplexity"), report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not cuda(), activation_checkpointing=spec.gradient_checkpointing,
        **distributed_args(spec, world_size()),
    )  # fmt: skip
    return config(**{**common, **method})


def best_metric(spec: TrainSpec) -> str:
    name = spec.best_metric or "eval_loss"
    return "eval_loss" if name in ("loss", "eval_loss") else f"eval_{name}"


def callbacks(run: Run, progress: bool, has_val: bool, scorers: tuple = ()) -> list:
    """metrics.jsonl, the progress bar, `scorers` (callbacks that add metrics at each evaluation), and early
    stopping when asked for (and there is validation): after the scorers, or it never sees their metrics."""
    from lmtailor.train.callbacks import MetricsCallback, ProgressCallback

    out = [MetricsCallback(run.out / "metrics.jsonl"), ProgressCallback(progress), *scorers]
    if has_val and run.spec.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        out.append(EarlyStoppingCallback(early_stopping_patience=run.spec.early_stopping_patience))
    return out


def train(run: Run, trainer, record: dict, extra: list | None = None) -> dict:
    """Train from the checkpoint to resume from (resume_point: one that trained the rows `record` says), with
    metrics.jsonl kept up to its step (a fresh run starts a new one); `extra`: the caller's callbacks (the job
    worker's). The metrics: loss, time, steps, and a last validation's."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl say it once
    for callback in extra or []:
        trainer.add_callback(callback)
    run.out.mkdir(parents=True, exist_ok=True)
    resume = resume_point(run.out, run.spec.resume, record, run.log)
    if is_rank0():  # one process rewrites the file the others never write
        reset_metrics(run.out / "metrics.jsonl", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = {"train_loss": result.training_loss, "runtime_s": round(time.time() - t0, 1),
               "steps": trainer.state.global_step}  # fmt: skip
    if trainer.eval_dataset is not None:
        metrics.update({k: v for k, v in trainer.evaluate().items() if k.startswith("eval_") and "runtime" not in k
                        and "per_second" not in k})  # fmt: skip
    return metrics


def save(run: Run, trainer, strategy: str, card: dict) -> Path:
    """The tuned model folder, written by rank 0: the weights (save_model), checkpoints removed unless kept,
    loss.png, and lmtailor.json last (`card`: make_card's arguments from the method)."""
    from lmtailor.train.callbacks import plot_loss

    spec, out = run.spec, run.out
    model = gathered(trainer, out, strategy, run.base.path)  # under FSDP / ZeRO-3 every rank takes part
    if not trainer.is_world_process_zero():
        return out
    save_model(model, run.tok, out, strategy, spec.merge, run.base.path)
    if not spec.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    plot_loss(out / "metrics.jsonl", out / "loss.png", title=f"{out.name}: loss")
    atomic_write_json(out / "lmtailor.json", make_card(run, strategy, **card))  # last: a finished model
    run.log(f"saved {out}")
    return out


def make_card(run: Run, strategy: str, hyperparameters: dict, why: dict, data: dict, metrics: dict) -> dict:
    """lmtailor.json: the base, method and strategy, the hyperparameters (the spec's, with what was chosen in
    `hyperparameters`), why each default was chosen, the data's fingerprints and rows, the metrics."""
    from lmtailor import __version__

    spec, base = run.spec, run.base
    parent = None
    if base.card:  # continued training of a tuned model
        parent = {"path": str(base.path), "name": base.card.get("name")}
    return {
        "lmtailor_version": __version__,
        "name": run.out.name,
        "base_model": root_base(spec, base),
        "base_path": str(base.path),
        "parent": parent,
        "method": spec.method,
        "strategy": strategy,
        "adapter": "adapter" if strategy in ("lora", "qlora") else None,
        "hyperparameters": {
            **spec.model_dump(exclude={"data", "val_data", "output", "name", "resume"}),
            "strategy": strategy,
            "precision": run.precision,
            **hyperparameters,
        },
        "defaults_chosen": why,
        "data": data,
        "metrics": metrics,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def data_card(spec: TrainSpec, n_train: int, n_val: int) -> dict:
    """The card's data section: the files' fingerprints (one training file; several: data/mix.py's record) and
    rows."""
    train = fingerprint(spec.data) if isinstance(spec.data, str) else None
    val = {**(fingerprint(spec.val_data) or {}), "rows": n_val} if n_val else None
    return {"train": {**(train or {}), "rows": n_train}, "val": val}


def fingerprint(path: str | None) -> dict | None:
    if not path:
        return None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"path": str(Path(path).resolve()), "sha256": digest}


def root_base(spec: TrainSpec, base) -> str:
    """The base model a run descends from: the spec's model, or for a tuned model the base its card names (a
    merge of models of different bases names none: then the model itself)."""
    return (base.card.get("base_model") if base.card else None) or spec.model


def add_retention(spec: TrainSpec, out: Path, home, log: Callable) -> None:
    """What the run cost: retention of the saved model (its card says its base and strategy) against the base it
    descends from, over the bundled general probes (evaluate/retention.py); the whole report in retention.json, a
    summary added to the card. Whatever stops the measurement is said in the log: the model is saved and its card
    written already."""
    from lmtailor.evaluate.retention import card_entry, measure, summary_line

    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    if card["strategy"] in ("lora", "qlora") and not spec.merge:
        log("retention: not measured: the run saved the LoRA adapter only (merge: false)")
        return
    try:
        report = measure(
            card["base_model"], str(out), home, log=log, trust_remote_code=spec.trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 (a finished model is not failed by its measurement)
        log(f"retention: not measured: {e}")
        return
    atomic_write_json(out / "retention.json", report)
    card["metrics"]["retention"] = card_entry(report)
    atomic_write_json(out / "lmtailor.json", card)
    log(summary_line(report))
    for lost in report["regressions"][:3]:
        log(f"  lost: {lost['question']!r}: base {lost['base'][:80]!r} -> tuned {lost['tuned'][:80]!r}")


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def output_dir(spec: TrainSpec, home: str | Path | None) -> Path:
    if spec.output:
        return Path(spec.output).expanduser().resolve()
    stems = [Path(s.path).stem for s in spec.data_sources()]  # several files: a+b+c, or a+b+c+2 for five
    data = "+".join(stems[:3]) + (f"+{len(stems) - 3}" if len(stems) > 3 else "")
    name = spec.name or f"{Path(spec.model).name}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    return home_dir(home) / "models" / name


def compute_precision(spec: TrainSpec, device: str) -> str:
    """The compute precision: bf16 autocast where the hardware has it natively, else fp32."""
    import torch

    from lmtailor.models.loading import best_dtype

    want = spec.precision
    if want == "auto":
        want = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(best_dtype(device), "fp32")
    if want == "fp16" and device == "cpu":
        raise LmtailorError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return want


def weights_dtype(strategy: str, precision: str):
    """Frozen weights (LoRA's base) are stored in the compute dtype; weights that train stay fp32 masters."""
    import torch

    if strategy == "lora" and precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32


def load_4bit(base, precision: str, trust_remote_code: bool):
    """The base in 4-bit NF4 (bitsandbytes) for QLoRA; CUDA only, said in words anywhere else."""
    import torch

    if not torch.cuda.is_available():
        raise LmtailorError(
            "strategy qlora needs a CUDA GPU (bitsandbytes 4-bit weights); this machine has none: "
            "use strategy lora (the same adapters over a bf16 base)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LmtailorError("strategy qlora needs bitsandbytes: pip install bitsandbytes") from None
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if precision == "bf16" else torch.float16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)  # fmt: skip
    local = int(os.environ.get("LOCAL_RANK", "0"))
    model = AutoModelForCausalLM.from_pretrained(base.path, quantization_config=quant, dtype=compute,
                                                 device_map={"": local}, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)  # fmt: skip
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def world_size() -> int:
    """Processes training together (torchrun sets WORLD_SIZE in each); 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    """The process that writes (torchrun sets RANK in each); True without a launcher."""
    return os.environ.get("RANK", "0") == "0"


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def distributed_args(spec: TrainSpec, world: int) -> dict:
    """TrainingArguments for the chosen engine when several processes train: DDP (gloo on CPUs, NCCL on GPUs),
    FSDP full sharding, or a DeepSpeed ZeRO config (stage 2 or 3, optional CPU offload)."""
    if world == 1:
        return {}
    out: dict = {"ddp_backend": "nccl" if cuda() else "gloo"}
    if spec.distributed != "ddp" and not cuda():
        # PyTorch's FSDP itself runs on CPUs (gloo), but accelerate, which the Trainer trains through, turns its
        # FSDP and DeepSpeed plugins on only for GPU-like backends: on CPUs the run would quietly be plain DDP.
        raise LmtailorError(
            f"distributed {spec.distributed} needs GPUs (accelerate shards only on GPU backends); "
            "on CPUs use --distributed ddp"
        )
    if spec.distributed == "fsdp":
        out.update(fsdp="full_shard auto_wrap",
                   fsdp_config={"state_dict_type": "FULL_STATE_DICT", "use_orig_params": True})  # fmt: skip
    elif spec.distributed.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise LmtailorError(
                f"distributed {spec.distributed} needs DeepSpeed: pip install deepspeed (on a CUDA machine)"
            ) from None
        stage = 3 if spec.distributed.endswith("3") else 2
        zero: dict = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
            if spec.offload:
                zero["offload_param"] = {"device": "cpu", "pin_memory": True}
                zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        out["deepspeed"] = {
            "zero_optimization": zero,
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    return out


def rows_record(items: list, spec: TrainSpec, batch_size: int, **more) -> dict:
    """What decides which rows each step trains: the rows (`items`, any JSON: the data after the validation
    split, recitations and copies included), `more` (how they are packed, say), the batching and the seed that
    shuffles them. A resume skips the steps already done by position, so it is only right when all of these are
    what they were in the run that wrote the checkpoint. Rows are fingerprinted as text, not tokens: some chat
    templates (Llama 3's) put today's date into every row."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item, ensure_ascii=False, sort_keys=True, default=str).encode())
    return {
        "rows": len(items),
        "rows_sha256": digest.hexdigest(),
        **more,
        "batch_size": batch_size,
        "grad_accum": spec.grad_accum,
        "seed": spec.seed,
        "processes": world_size(),
    }


def resume_point(out: Path, resume: bool, record: dict, log: Callable) -> Path | None:
    """The checkpoint a run goes on from: with `resume`, the newest complete one (none found is said in the log,
    and the run starts from the beginning), checked against the rows `record` says it trains (check_rows)."""
    point = last_checkpoint(out) if resume else None
    if resume and point is None:
        log(f"no checkpoint in {out / 'checkpoints'}: starting from the beginning")
    check_rows(out, point, record, log)
    return point


def check_rows(out: Path, resume: Path | None, record: dict, log: Callable) -> None:
    """A fresh run writes `record` next to its checkpoints (and removes an earlier run's); a resumed one must
    match the record written."""
    path = out / "checkpoints" / ROWS_FILE
    if resume is None:
        if is_rank0():
            stale = [p for _, p in checkpoints(out)]
            for folder in stale:  # an earlier run's: a later resume must not pick one of them up
                shutil.rmtree(folder, ignore_errors=True)
            if stale:
                log(f"removed {len(stale)} checkpoint(s) of an earlier run in {path.parent}")
            atomic_write_json(path, record)
        return
    if not path.is_file():  # checkpoints made before lmtailor recorded their rows
        log(
            f"resuming from {resume.name}; the run that wrote it did not record its rows, so they are not checked"
        )
        return
    then = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in record if k in then and k != "rows_sha256" and then[k] != record[k]]
    if then.get("rows_sha256") != record["rows_sha256"] and "rows" not in changed:
        changed.append("rows_sha256")
    if not changed:
        return
    what = "; ".join(
        "the rows' content"
        if k == "rows_sha256"
        else f"{then[k]} rows then, {record[k]} now"
        if k == "rows"
        else f"{k} {then[k]} then, {record[k]} now"
        for k in changed
    )
    raise LmtailorError(
        f"cannot resume from {resume.name}: the run that wrote it trained other rows or batches ({what}; the "
        "data, the validation share, recitations and copies, the max length, the batching or the seed decide "
        "them), and a resume would skip the wrong steps. Resume with the same data and settings, or start a "
        "new run (another output folder, or remove the checkpoints of this one)"
    )


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `checkpoint-<step>` folder of the run in `out`, oldest first."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(
        (int(p.name.rsplit("-", 1)[1]), p)
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name.rsplit("-", 1)[1].isdigit()
    )


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint. A process killed while saving leaves a checkpoint folder without its
    trainer_state.json (the Trainer writes it last): resuming from that one would fail, so it is passed over."""
    for _, path in reversed(checkpoints(out)):
        if (path / "trainer_state.json").is_file():
            return path
    return None


def reset_metrics(path: Path, resume: Path | None) -> None:
    """A new run starts a new metrics.jsonl; a resumed one keeps the rows up to its checkpoint's step."""
    from lmtailor.home import atomic_write_text
    from lmtailor.train.callbacks import read_metrics

    if not path.exists():
        return
    if resume is None:
        path.unlink()
        return
    step = int(resume.name.rsplit("-", 1)[-1])
    kept = [json.dumps(r) for r in read_metrics(path) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def save_model(model, tok, out: Path, strategy: str, merge: bool, base_path: Path) -> None:
    """Adapter (LoRA) under adapter/, full weights at the top so plain from_pretrained(out) loads them."""
    import torch

    base_dtype = getattr(torch, stored_dtype(base_path), torch.float32)
    if strategy in ("lora", "qlora"):
        adapter = out / "adapter"
        tmp = out / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(adapter, ignore_errors=True)
        os.replace(tmp, adapter)
        if not merge:
            return
        # Merge into the base as stored (it may have trained over a bf16 copy), so untouched weights stay exact.
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=base_dtype, use_safetensors=True)
        model = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    model = model.to(base_dtype)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def stored_dtype(path: Path) -> str:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def gathered(trainer, out: Path, strategy: str, base_path: Path):
    """The trained model, whole, for rank 0 to save: as is without sharding; under FSDP and DeepSpeed ZeRO-3
    every rank takes part in transformers' own save_model (full state dict), and rank 0 loads it back."""
    args = trainer.args
    if not (args.fsdp or args.deepspeed) or world_size() == 1:
        return trainer.model
    folder = out / ".gathered"
    trainer.save_model(str(folder))  # a collective: weights (or the LoRA adapter) written by rank 0
    if not trainer.is_world_process_zero():
        return None
    from transformers import AutoModelForCausalLM

    if strategy in ("lora", "qlora"):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True)
        model = PeftModel.from_pretrained(base, folder, is_trainable=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return model
