"""Supervised fine-tuning: load model, apply strategy, tokenize data, train with TRL, save, write the card."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lmtailor.data.records import Record
from lmtailor.errors import DataError, LmtailorError
from lmtailor.home import atomic_write_json, home_dir
from lmtailor.specs import TrainSpec


def run_sft(
    spec: TrainSpec,
    home: str | Path | None = None,
    progress: bool = True,
    log: Callable = print,
    callbacks: list | None = None,
) -> Path:
    """Train `spec.model` on `spec.data`; return the tuned model folder. `callbacks`: extra transformers
    TrainerCallbacks (the job worker's: events, checkpoints, pause)."""
    if spec.method == "dpo":
        from lmtailor.train.dpo import run_dpo

        return run_dpo(spec, home=home, log=log, progress=progress, callbacks=callbacks)
    if spec.method == "reinforcement":
        from lmtailor.train.rft import run_rft

        return run_rft(spec, home=home, log=log, progress=progress, callbacks=callbacks)
    import torch

    from lmtailor.data.augment import augment_questions, recitations, single_answers
    from lmtailor.data.mix import mixture_lines
    from lmtailor.data.tokenize import tokenize_record, tokenize_records
    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import _count_parameters, best_device, load_model, load_tokenizer
    from lmtailor.train.defaults import choose
    from lmtailor.train.fastpath import restore_attention, use_fast_path
    from lmtailor.train.strategy import apply_strategy, trainable_summary

    torch.manual_seed(spec.seed)
    train_recs, val_recs = load_train_val(spec)  # bad data fails before any model is loaded or converted
    base = resolve(spec.model, home)
    out = output_dir(spec, home)
    tok = load_tokenizer(base, trust_remote_code=spec.trust_remote_code)
    device = best_device()
    precision = _precision(spec, device)
    full = [tokenize_record(tok, r)[0] for r in train_recs]  # once; truncated below to the chosen length
    lengths = [len(ex["input_ids"]) for ex in full]
    n_params = _count_parameters(base.path) or 0
    answers = single_answers(train_recs)
    plan = choose(spec, len(train_recs), lengths, n_params, on_gpu=device == "cuda", answers=answers)
    if plan.strategy == "qlora":
        model = load_4bit(base, precision, spec.trust_remote_code)
    else:
        model = load_model(
            base,
            dtype=_weights_dtype(plan.strategy, precision),
            device=device,
            trust_remote_code=spec.trust_remote_code,
        )
    # the base's own answers to general prompts (train/replay.py), a share of the rows the plan asks for
    replayed = _replay(spec, base, plan, len(train_recs), home, log)
    replayed_full = [tokenize_record(tok, r)[0] for r in replayed]
    _fit_length(spec, plan, replayed_full, "replay row")
    recited = recitations(train_recs) if plan.recite else []
    recited_full = [tokenize_record(tok, r)[0] for r in recited]  # once, like `full`
    if plan.recite and not recited:
        log("recite: no single question-answer row to recite")
    _fit_length(spec, plan, recited_full, "recitation")  # longer than its row when the question was shorter
    rows, rows_full = train_recs, full
    if plan.augment_copies:
        rows = augment_questions(train_recs, plan.augment_copies, seed=spec.seed)
        rows_full = [tokenize_record(tok, r)[0] for r in rows]
    train_ex, stats = tokenize_records(tok, rows + recited + replayed, plan.max_length,
                                       full=rows_full + recited_full + replayed_full)  # fmt: skip
    # a packed row holds about `batch` samples, made ones included
    if recited or replayed or plan.augment_copies:
        lengths = [len(ex["input_ids"]) for ex in train_ex]
    val_ex, _ = tokenize_records(tok, val_recs, plan.max_length) if val_recs else ([], None)
    if not train_ex:
        raise DataError(data_name(spec), None, "no row has assistant tokens to learn from")
    model = apply_strategy(model, spec, plan.strategy, plan.freeze_modules)
    trainable, total = trainable_summary(model)
    log(
        f"model {spec.model} ({total / 1e6:.0f}M parameters) on {device}, {precision}; strategy {plan.strategy}: "
        f"{trainable / 1e6:.2f}M trainable"
    )
    log(
        f"data: {stats.rows} rows{f' ({len(recited)} of them recitations)' if recited else ''}"
        f"{f' ({len(replayed)} replayed answers of the base)' if replayed else ''}, "
        f"{stats.trained_tokens} trained tokens of {stats.tokens}; "
        f"{stats.truncated} truncated to {plan.max_length}; validation: {len(val_ex)} rows"
    )
    for line in mixture_lines(getattr(train_recs, "sources", [])):  # several files: what each one gave
        log(line)
    for dropped in stats.dropped[:5]:
        log(f"  dropped {dropped}")
    for key, why in plan.why.items():
        log(f"  {key} = {why}")

    replaced = use_fast_path(model, attention=spec.packing and precision == "fp32")  # train/fastpath.py: why
    trainer = _build_trainer(spec, plan, model, tok, train_ex, val_ex, out, precision, progress, lengths,
                             varlen=replaced is not None)  # fmt: skip
    add_source_losses(trainer, spec, plan, tok, val_recs, lengths, out)
    if val_ex and spec.eval_metrics:
        from lmtailor.train.callbacks import EvalMetricsCallback, val_rows

        trainer.add_callback(
            EvalMetricsCallback(tok, val_rows(val_recs), spec.eval_metrics, out / "metrics.jsonl")
        )
    for callback in callbacks or []:
        trainer.add_callback(callback)
    texts = [[[m.role, m.content, m.weight] for m in r.messages] for r in rows + recited + replayed]
    packed = len(trainer.train_dataset) if spec.packing else None
    computed = None
    if packed and trainer.data_collator.share_prefix:  # train/collate.py: can_share_prefix
        from lmtailor.train.collate import computed_tokens

        computed, whole = computed_tokens(trainer.train_dataset)
        log(f"packed into {packed} rows; with each row's shared prefix once, {computed} of the {whole} tokens are "
            f"computed ({1 - computed / whole:.0%} fewer)")  # fmt: skip
    record = rows_record(texts, spec, plan.batch_size, max_length=plan.max_length, packed_rows=packed)
    resume = resume_point(out, spec.resume, record, log)
    if is_rank0():  # one process rewrites the file the others never write
        _reset_metrics(out / "metrics.jsonl", resume)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.time() - t0
    metrics = {
        "train_loss": result.training_loss,
        "runtime_s": round(runtime, 1),
        "steps": trainer.state.global_step,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trained_tokens": stats.trained_tokens * plan.epochs,
        # packed rows hold each shared prefix once (train/collate.py): fewer tokens computed than trained on
        "computed_tokens": round(computed * plan.epochs) if computed else None,
        "processes": world_size(),
        "gradient_checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing", False)),
        "wrapped_as": type(
            trainer.model_wrapped
        ).__name__,  # DistributedDataParallel, FullyShardedDataParallel…
    }
    if val_ex:
        metrics.update({k: v for k, v in trainer.evaluate().items() if k.startswith("eval_") and "runtime" not in k
                        and "per_second" not in k})  # fmt: skip
    restore_attention(model, replaced)
    model = _gathered(trainer, out, plan.strategy, base.path)  # under FSDP / ZeRO-3 every rank takes part
    if not trainer.is_world_process_zero():  # one process writes the model, the card and the curve
        return out
    _save(model, tok, out, plan.strategy, spec.merge, base.path)
    if not spec.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    from lmtailor.train.callbacks import plot_loss

    plot_loss(out / "metrics.jsonl", out / "loss.png", title=f"{out.name}: loss")
    metrics["replay_rows"] = len(replayed)
    write_card(out, spec, base, plan, stats, train_recs, val_recs, metrics, precision)
    log(f"saved {out}")
    if spec.retention:  # a finished model first; what it cost is added to its card
        del trainer, model  # the two models retention loads need the memory more
        _free_memory()
        add_retention(spec, base, plan.strategy, out, home, log)
    return out


def _fit_length(spec: TrainSpec, plan, made: list[dict], what: str) -> None:
    """Rows lmtailor makes (recitations, replay) may be longer than the user's, from which the plan took its
    max length: a chosen length grows to the longest of them (up to 2048), a given one stays."""
    if not made or spec.max_length is not None:
        return
    longest = max(len(ex["input_ids"]) for ex in made)
    if longest > plan.max_length:
        plan.max_length = min(2048, longest)
        plan.why["max_length"] += f"; {longest} for the longest {what}"


def root_base(spec: TrainSpec, base) -> str:
    """The base model a run descends from: the spec's model, or for a tuned model the base its card names (a
    merge of models of different bases names none: then the model itself)."""
    return (base.card.get("base_model") if base.card else None) or spec.model


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _replay(spec: TrainSpec, base, plan, user_rows: int, home, log: Callable) -> list[Record]:
    """The replay rows the plan asks for: the root base's own answers to bundled general prompts."""
    from lmtailor.train.replay import replay_count, replay_rows

    n = replay_count(plan.replay_ratio, user_rows)
    if not n:
        return []
    try:
        rows = replay_rows(root_base(spec, base), n, spec.seed, home, log, spec.trust_remote_code)
    except LmtailorError as e:
        if spec.replay_ratio is not None:  # asked for: the run cannot do what it was told
            raise
        log(f"{e}; training without replay")  # the rule's default: said, and the run goes on
        plan.replay_ratio = 0.0
        plan.why["replay_ratio"] = f"0: {e}"
        for key, (value, why) in plan.without_replay.items():  # the rule's choices without replay's rows
            setattr(plan, key, value)
            plan.why[key] = why
        return []
    log(f"replay: {len(rows)} rows of the base's own answers to general prompts ({plan.replay_ratio:.0%})")
    return rows


def add_retention(spec: TrainSpec, base, strategy: str, out: Path, home, log: Callable) -> None:
    """What the run cost: retention of the saved model against the base it descends from, over the bundled
    general probes (evaluate/retention.py); the whole report in retention.json, a summary added to the card.
    Whatever stops the measurement is said in the log: the model is saved and its card written already."""
    from lmtailor.evaluate.retention import card_entry, measure, summary_line
    from lmtailor.home import atomic_write_json

    if strategy in ("lora", "qlora") and not spec.merge:
        log("retention: not measured: the run saved the LoRA adapter only (merge: false)")
        return
    try:
        report = measure(
            root_base(spec, base), str(out), home, log=log, trust_remote_code=spec.trust_remote_code
        )
    except Exception as e:  # noqa: BLE001 (a finished model is not failed by its measurement)
        log(f"retention: not measured: {e}")
        return
    atomic_write_json(out / "retention.json", report)
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    card["metrics"]["retention"] = card_entry(report)
    atomic_write_json(out / "lmtailor.json", card)
    log(summary_line(report))
    for lost in report["regressions"][:3]:
        log(f"  lost: {lost['question']!r}: base {lost['base'][:80]!r} -> tuned {lost['tuned'][:80]!r}")


def world_size() -> int:
    """Processes training together (torchrun sets WORLD_SIZE in each); 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def packed_row_length(max_length: int, per_rank: int, lengths: list[int]) -> int:
    """Tokens of a packed row: bins of about `per_rank` samples each, one row per process and step (samples
    kept apart by the mask); the memory estimate (train/memory.py) assumes the same rows."""
    mean = sum(lengths) / max(1, len(lengths))
    return max(max_length, int(math.ceil(per_rank * mean)))


def is_rank0() -> bool:
    """The process that writes (torchrun sets RANK in each); True without a launcher."""
    return os.environ.get("RANK", "0") == "0"


def _gathered(trainer, out: Path, strategy: str, base_path: Path):
    """The trained model, whole, for rank 0 to save: as is without sharding; under FSDP and DeepSpeed ZeRO-3
    every rank takes part in transformers' own save_model (full state dict), and rank 0 loads it back."""
    args = trainer.args
    if not (args.fsdp or args.deepspeed) or world_size() == 1:
        return trainer.model
    gathered = out / ".gathered"
    trainer.save_model(str(gathered))  # a collective: weights (or the LoRA adapter) written by rank 0
    if not trainer.is_world_process_zero():
        return None
    from transformers import AutoModelForCausalLM

    if strategy in ("lora", "qlora"):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True)
        model = PeftModel.from_pretrained(base, gathered, is_trainable=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(gathered, use_safetensors=True)
    shutil.rmtree(gathered, ignore_errors=True)
    return model


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


def _reset_metrics(path: Path, resume: Path | None) -> None:
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


def output_dir(spec: TrainSpec, home: str | Path | None) -> Path:
    if spec.output:
        return Path(spec.output).expanduser().resolve()
    stems = [Path(s.path).stem for s in spec.data_sources()]  # several files: a+b+c, or a+b+c+2 for five
    data = "+".join(stems[:3]) + (f"+{len(stems) - 3}" if len(stems) > 3 else "")
    name = spec.name or f"{Path(spec.model).name}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    return home_dir(home) / "models" / name


def data_name(spec: TrainSpec) -> str:
    """The training data in a message: its file, or the files of a mixture joined by ' + '."""
    return spec.data if isinstance(spec.data, str) else " + ".join(s.path for s in spec.data)


def load_train_val(spec: TrainSpec) -> tuple[list[Record], list[Record]]:
    """The training and validation rows. Several files (`data` a list) are mixed by data/mix.py: the training list
    is then a MixedRows, which carries the record of the draw (`.sources`) to the log and the card."""
    from lmtailor.data.formats import load_records
    from lmtailor.data.split import split_records

    if not isinstance(spec.data, str):
        from lmtailor.data.mix import load_mixture

        return load_mixture(spec)
    train = load_records(spec.data, fmt=spec.format, on_error=spec.on_error).records
    if not train:
        raise DataError(spec.data, None, "no usable rows")
    if spec.val_data:
        return train, load_records(spec.val_data, fmt=spec.format, on_error=spec.on_error).records
    if spec.val_ratio > 0:
        parts = split_records(train, ratios=(1 - spec.val_ratio, spec.val_ratio, 0.0), seed=spec.seed)
        return parts["train"], parts["val"]
    return train, []


def add_source_losses(
    trainer, spec: TrainSpec, plan, tok, val_recs: list[Record], lengths: list[int], out: Path
):
    """With several training files, each validation also reports the loss on each file's validation rows
    (`eval_<source>_loss`: metrics.jsonl, the card), tokenised and packed as the whole set is; `eval_loss`, which
    keep-best and early stopping watch, stays the Trainer's own over the whole set. One more pass over them."""
    from datasets import Dataset

    from lmtailor.data.mix import SOURCE_KEY, source_names
    from lmtailor.data.tokenize import tokenize_records
    from lmtailor.train.callbacks import SourceLossCallback

    if isinstance(spec.data, str) or trainer.eval_dataset is None:
        return
    names = source_names(spec.data_sources())
    sets = {}
    for name in names:
        rows = [r for r in val_recs if r.extra.get(SOURCE_KEY) == name]
        examples, _ = tokenize_records(tok, rows, plan.max_length)
        if examples:
            sets[name] = Dataset.from_list(examples)
    if spec.packing:  # as _build_trainer packs the whole set
        from trl import pack_dataset

        seq_len = packed_row_length(plan.max_length, plan.batch_size // world_size(), lengths)
        sets = {name: pack_dataset(ds, seq_len, "bfd") for name, ds in sets.items()}
    if len(sets) > 1:  # not when a val_data file has no `source` keys naming the files: eval_loss says it all
        trainer.add_callback(SourceLossCallback(trainer, sets, out / "metrics.jsonl"))


def _precision(spec: TrainSpec, device: str):
    """The compute precision: bf16 autocast where the hardware has it natively, else fp32."""
    import torch

    from lmtailor.models.loading import best_dtype

    want = spec.precision
    if want == "auto":
        want = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(best_dtype(device), "fp32")
    if want == "fp16" and device == "cpu":
        raise LmtailorError("precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return want


def _weights_dtype(strategy: str, precision: str):
    """Frozen weights (LoRA's base) are stored in the compute dtype; weights that train stay fp32 masters."""
    import torch

    if strategy == "lora" and precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32


def _build_trainer(spec, plan, model, tok, train_ex, val_ex, out: Path, precision, progress, lengths,
                   varlen: bool = False):  # fmt: skip
    """transformers' Trainer over our tokenised rows (TRL's SFT loss path builds fp32 vocab-wide metrics on
    every token, which costs a third of a CPU step; the loss here is the model's own, over the trained positions:
    train/fastpath.py). The head runs over every position: over the trained ones only (`logits_to_keep`) the step
    was 1.14x faster with the same loss, but bf16 gradients 0.6% apart, and in four paired runs the quickstart
    answered 4-10 points fewer (docs/defaults.md)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from lmtailor.train.callbacks import MetricsCallback, ProgressCallback
    from lmtailor.train.collate import PackedCollator, PackedTrainer, PaddedCollator, can_share_prefix

    train_ds = Dataset.from_list(train_ex)
    val_ds = Dataset.from_list(val_ex) if val_ex else None
    world = world_size()
    if not spec.batch_size and plan.batch_size % world:  # chosen here: rounded up so every process gets rows
        plan.batch_size += world - plan.batch_size % world
        plan.why["batch_size"] = (
            f"{plan.batch_size}: {plan.why.get('batch_size', '')}, rounded to {world} processes"
        )
    if plan.batch_size % world:
        raise LmtailorError(
            f"batch size {plan.batch_size} does not split evenly over {world} processes: give --batch-size a "
            f"multiple of {world}"
        )
    per_rank = plan.batch_size // world  # samples each process takes per step: the global batch is the spec's
    if spec.packing:
        from trl import pack_dataset

        seq_len = packed_row_length(plan.max_length, per_rank, lengths)
        train_ds = pack_dataset(train_ds, seq_len, "bfd")
        val_ds = pack_dataset(val_ds, seq_len, "bfd") if val_ds is not None else None
        share = can_share_prefix(model.config, spec.trust_remote_code)
        collator, per_device = PackedCollator(tok.pad_token_id, varlen=varlen, share_prefix=share), 1
    else:
        collator, per_device = PaddedCollator(tok.pad_token_id), per_rank
    steps_per_epoch = max(1, math.ceil(len(train_ds) / (per_device * spec.grad_accum * world)))
    has_val = val_ds is not None
    best = bool(has_val and (spec.keep_best or spec.early_stopping_patience))
    best_metric = _best_metric(spec)
    eval_every = spec.eval_steps or steps_per_epoch
    total_steps = math.ceil(steps_per_epoch * plan.epochs)
    # A checkpoint of a full model holds its optimizer state (12 bytes a parameter): about 3 a run, on epoch ends.
    default_save = steps_per_epoch * max(1, math.ceil(total_steps / steps_per_epoch / 3))
    save_every = eval_every if best else (spec.save_steps or default_save)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        learning_rate=plan.learning_rate,
        num_train_epochs=plan.epochs,
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        gradient_accumulation_steps=spec.grad_accum,
        warmup_steps=int(spec.warmup_ratio * total_steps),  # floored: a 1-step run must not spend it at lr 0
        lr_scheduler_type=spec.scheduler,
        weight_decay=spec.weight_decay,
        neftune_noise_alpha=plan.neftune_alpha or None,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=max(1, min(10, steps_per_epoch // 2)),
        eval_strategy="steps" if has_val else "no",
        eval_steps=eval_every if has_val else None,
        save_strategy="steps",
        save_steps=save_every,
        save_total_limit=spec.save_total_limit,
        load_best_model_at_end=best,
        metric_for_best_model=best_metric,
        greater_is_better=best_metric not in ("eval_loss", "eval_perplexity"),
        include_num_input_tokens_seen="all" if spec.packing else "non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not _cuda(),
        activation_checkpointing=spec.gradient_checkpointing,
        **distributed_args(spec, world),
    )
    callbacks = [MetricsCallback(out / "metrics.jsonl"), ProgressCallback(progress)]
    if has_val and spec.early_stopping_patience:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=spec.early_stopping_patience))
    out.mkdir(parents=True, exist_ok=True)
    trainer = (PackedTrainer if spec.packing else Trainer)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        callbacks=callbacks,
        processing_class=tok,  # checkpoints carry the tokenizer, so each one loads (and serves) alone
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl say it once
    return trainer


def distributed_args(spec: TrainSpec, world: int) -> dict:
    """TrainingArguments for the chosen engine when several processes train: DDP (gloo on CPUs, NCCL on GPUs),
    FSDP full sharding, or a DeepSpeed ZeRO config (stage 2 or 3, optional CPU offload)."""
    if world == 1:
        return {}
    out: dict = {"ddp_backend": "nccl" if _cuda() else "gloo"}
    if spec.distributed != "ddp" and not _cuda():
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


def _best_metric(spec: TrainSpec) -> str:
    name = spec.best_metric or "eval_loss"
    return "eval_loss" if name in ("loss", "eval_loss") else f"eval_{name}"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


ROWS_FILE = "rows.json"  # in checkpoints/: what the run trains on, to check a resume against


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


def _save(model, tok, out: Path, strategy: str, merge: bool, base_path: Path) -> None:
    """Adapter (LoRA) under adapter/, full weights at the top so plain from_pretrained(out) loads them."""
    import torch

    base_dtype = getattr(torch, _stored_dtype(base_path), torch.float32)
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


def _stored_dtype(path: Path) -> str:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def fingerprint(path: str | None) -> dict | None:
    if not path:
        return None
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"path": str(Path(path).resolve()), "sha256": digest}


def data_card(spec: TrainSpec, train_recs: list[Record], val_recs: list[Record], stats) -> dict:
    """The card's data section: the files' fingerprints and rows; for several files (data/mix.py) each one's
    path, sha256, rows available and drawn, weight and validation rows, and the seed of the draw."""
    sources = getattr(train_recs, "sources", None)
    train = fingerprint(spec.data) if isinstance(spec.data, str) else None
    val = {**(fingerprint(spec.val_data) or {}), "rows": len(val_recs)} if val_recs else None
    card: dict = {"train": {**(train or {}), "rows": len(train_recs)}, "val": val}
    if sources:
        card["sources"] = [s.as_dict() for s in sources]
        card["mix_seed"] = getattr(train_recs, "seed", spec.seed)
        if val and not spec.val_data:
            val["by_source"] = {s.name: s.val_rows for s in sources}
    return {**card, "trained_tokens_per_epoch": stats.trained_tokens, "truncated_rows": stats.truncated}


def write_card(out, spec, base, plan, stats, train_recs, val_recs, metrics, precision: str = "fp32") -> None:
    """lmtailor.json, written last: a folder with a card is a finished model."""
    from lmtailor import __version__

    parent = None
    if base.card:  # continued training of a tuned model
        parent = {"path": str(base.path), "name": base.card.get("name")}
    card = {
        "lmtailor_version": __version__,
        "name": out.name,
        "base_model": root_base(spec, base),
        "base_path": str(base.path),
        "parent": parent,
        "method": spec.method,
        "strategy": plan.strategy,
        "adapter": "adapter" if plan.strategy in ("lora", "qlora") else None,
        "hyperparameters": {
            **spec.model_dump(exclude={"data", "val_data", "output", "name", "resume"}),
            "learning_rate": plan.learning_rate,
            "epochs": plan.epochs,
            "batch_size": plan.batch_size,
            "max_length": plan.max_length,
            "strategy": plan.strategy,
            "freeze_modules": plan.freeze_modules,
            "precision": precision,
            "distributed": spec.distributed if world_size() > 1 else None,
            "gradient_checkpointing": spec.gradient_checkpointing,
            "neftune_alpha": plan.neftune_alpha,
            "augment_copies": plan.augment_copies,
            "recite": plan.recite,
            "replay_ratio": plan.replay_ratio,
        },
        "defaults_chosen": plan.why,
        "data": data_card(spec, train_recs, val_recs, stats),
        "metrics": metrics,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / "lmtailor.json", card)
