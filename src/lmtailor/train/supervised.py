"""`method: sft`: supervised fine-tuning on our own tokenised rows with transformers' Trainer.

    run(spec)  data (several files mixed) → the plan (train/defaults.py: strategy, lr, epochs, batch, length)
               → the base → replayed, recited and copied rows → tokenised with the chat template (loss on
               assistant turns) → strategy → packed or padded batches, the fast loss → core.train, core.save

What every method does alike (validation, checkpoints, resume, metrics.jsonl, saving, the card) is train/core.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lmtailor.data.records import Record
from lmtailor.errors import DataError, LmtailorError
from lmtailor.specs import TrainSpec
from lmtailor.train import core


@dataclass
class Rows:
    """What a run trains on: the user's rows (or their noisy copies), recitations and replayed answers made from
    them, all tokenised; the validation rows tokenised; each training sample's length."""

    user: list[Record]
    recited: list[Record]
    replayed: list[Record]
    train: list[dict]
    val: list[dict]
    stats: object  # data/tokenize.TokenStats
    lengths: list[int]


def run(spec: TrainSpec, home=None, progress: bool = True, log: Callable = print, callbacks: list | None = None,
        ) -> Path:  # fmt: skip
    """Train `spec.model` on `spec.data`; return the tuned model folder."""
    import torch

    from lmtailor.train.fastpath import restore_attention, use_fast_path
    from lmtailor.train.strategy import apply_strategy, trainable_summary

    torch.manual_seed(spec.seed)
    train_recs, val_recs = load_train_val(spec)  # bad data fails before any model is loaded or converted
    run = core.start(spec, home, log)
    plan, full = _plan(run, train_recs)
    model = core.load_weights(run, plan.strategy)
    rows = _rows(run, plan, train_recs, val_recs, full)
    model = apply_strategy(model, spec, plan.strategy, plan.freeze_modules)
    trainable, total = trainable_summary(model)
    _log_start(run, plan, rows, getattr(train_recs, "sources", None), (trainable, total))
    # train/fastpath.py: the loss over trained positions; in fp32 also attention per packed sample
    replaced = use_fast_path(model, attention=spec.packing and run.precision == "fp32")
    scorers = ()
    if (
        rows.val and spec.eval_metrics
    ):  # generated answers scored at each evaluation: early stopping can watch them
        from lmtailor.train.callbacks import EvalMetricsCallback, val_rows

        scorers = (
            EvalMetricsCallback(run.tok, val_rows(val_recs), spec.eval_metrics, run.out / "metrics.jsonl"),
        )
    trainer = _build_trainer(run, plan, model, rows, progress, varlen=replaced is not None, scorers=scorers)
    add_source_losses(trainer, spec, plan, run.tok, val_recs, rows.lengths, run.out)
    record, computed = _record(run, plan, trainer, rows)
    metrics = core.train(run, trainer, record, callbacks)
    metrics.update({
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trained_tokens": rows.stats.trained_tokens * plan.epochs,
        # packed rows hold each shared prefix once (train/collate.py): fewer tokens computed than trained on
        "computed_tokens": round(computed * plan.epochs) if computed else None,
        "processes": core.world_size(),
        "gradient_checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing", False)),
        "wrapped_as": type(trainer.model_wrapped).__name__,  # DistributedDataParallel, FullyShardedDataParallel…
        "replay_rows": len(rows.replayed),
    })  # fmt: skip
    restore_attention(model, replaced)
    card = {"hyperparameters": _chosen(spec, plan), "why": plan.why, "metrics": metrics,
            "data": data_card(spec, train_recs, val_recs, rows.stats)}  # fmt: skip
    return core.save(run, trainer, plan.strategy, card)


def _plan(run: core.Run, train_recs: list[Record]):
    """The plan (train/defaults.choose) from the rows' tokenised lengths and the model's size; the full
    tokenised rows, truncated later to the chosen length."""
    from lmtailor.data.augment import single_answers
    from lmtailor.data.tokenize import tokenize_record
    from lmtailor.models.loading import _count_parameters
    from lmtailor.train.defaults import choose

    full = [tokenize_record(run.tok, r)[0] for r in train_recs]  # once; truncated below to the chosen length
    lengths = [len(ex["input_ids"]) for ex in full]
    n_params = _count_parameters(run.base.path) or 0
    plan = choose(run.spec, len(train_recs), lengths, n_params, on_gpu=run.device == "cuda",
                  answers=single_answers(train_recs))  # fmt: skip
    return plan, full


def _rows(run: core.Run, plan, train_recs: list[Record], val_recs: list[Record], full: list[dict]) -> Rows:
    """The user's rows with what the plan adds (replayed answers, recitations, noisy copies), tokenised."""
    from lmtailor.data.augment import augment_questions, recitations
    from lmtailor.data.tokenize import tokenize_record, tokenize_records

    spec, tok = run.spec, run.tok
    # the base's own answers to general prompts (train/replay.py), a share of the rows the plan asks for
    replayed = _replay(spec, run.base, plan, len(train_recs), run.home, run.log)
    replayed_full = [tokenize_record(tok, r)[0] for r in replayed]
    _fit_length(spec, plan, replayed_full, "replay row")
    recited = recitations(train_recs) if plan.recite else []
    recited_full = [tokenize_record(tok, r)[0] for r in recited]  # once, like `full`
    if plan.recite and not recited:
        run.log("recite: no single question-answer row to recite")
    _fit_length(spec, plan, recited_full, "recitation")  # longer than its row when the question was shorter
    rows, rows_full = train_recs, full
    if plan.augment_copies:
        rows = augment_questions(train_recs, plan.augment_copies, seed=spec.seed)
        rows_full = [tokenize_record(tok, r)[0] for r in rows]
    train_ex, stats = tokenize_records(tok, rows + recited + replayed, plan.max_length,
                                       full=rows_full + recited_full + replayed_full)  # fmt: skip
    # a packed row holds about `batch` samples, made ones included
    lengths = [
        len(ex["input_ids"]) for ex in (train_ex if recited or replayed or plan.augment_copies else full)
    ]
    val_ex, _ = tokenize_records(tok, val_recs, plan.max_length) if val_recs else ([], None)
    if not train_ex:
        raise DataError(data_name(spec), None, "no row has assistant tokens to learn from")
    return Rows(rows, recited, replayed, train_ex, val_ex, stats, lengths)


def _log_start(run: core.Run, plan, rows: Rows, sources: list | None, params: tuple[int, int]) -> None:
    """What the run trains: the model and strategy, the rows and tokens, what each file gave, the plan's why."""
    from lmtailor.data.mix import mixture_lines

    spec, stats, log = run.spec, rows.stats, run.log
    trainable, total = params
    log(f"model {spec.model} ({total / 1e6:.0f}M parameters) on {run.device}, {run.precision}; strategy "
        f"{plan.strategy}: {trainable / 1e6:.2f}M trainable")  # fmt: skip
    log(
        f"data: {stats.rows} rows{f' ({len(rows.recited)} of them recitations)' if rows.recited else ''}"
        f"{f' ({len(rows.replayed)} replayed answers of the base)' if rows.replayed else ''}, "
        f"{stats.trained_tokens} trained tokens of {stats.tokens}; "
        f"{stats.truncated} truncated to {plan.max_length}; validation: {len(rows.val)} rows"
    )
    for line in mixture_lines(sources or []):  # several files: what each one gave
        log(line)
    for dropped in stats.dropped[:5]:
        log(f"  dropped {dropped}")
    for key, why in plan.why.items():
        log(f"  {key} = {why}")


def _record(run: core.Run, plan, trainer, rows: Rows) -> tuple[dict, int | None]:
    """What the run trains (core.rows_record: checked on resume), and the tokens computed when packed rows hold
    their shared prefix once (said in the log)."""
    spec = run.spec
    texts = [
        [[m.role, m.content, m.weight] for m in r.messages] for r in rows.user + rows.recited + rows.replayed
    ]
    packed = len(trainer.train_dataset) if spec.packing else None
    computed = None
    if packed and trainer.data_collator.share_prefix:  # train/collate.py: can_share_prefix
        from lmtailor.train.collate import computed_tokens

        computed, whole = computed_tokens(trainer.train_dataset)
        run.log(f"packed into {packed} rows; with each row's shared prefix once, {computed} of the {whole} tokens "
                f"are computed ({1 - computed / whole:.0%} fewer)")  # fmt: skip
    record = core.rows_record(texts, spec, plan.batch_size, max_length=plan.max_length, packed_rows=packed)
    return record, computed


def _chosen(spec: TrainSpec, plan) -> dict:
    """The card's hyperparameters the plan chose (the spec's own are in every card)."""
    return {
        "learning_rate": plan.learning_rate,
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "max_length": plan.max_length,
        "strategy": plan.strategy,
        "freeze_modules": plan.freeze_modules,
        "distributed": spec.distributed if core.world_size() > 1 else None,
        "gradient_checkpointing": spec.gradient_checkpointing,
        "neftune_alpha": plan.neftune_alpha,
        "augment_copies": plan.augment_copies,
        "recite": plan.recite,
        "replay_ratio": plan.replay_ratio,
    }


def _fit_length(spec: TrainSpec, plan, made: list[dict], what: str) -> None:
    """Rows lmtailor makes (recitations, replay) may be longer than the user's, from which the plan took its
    max length: a chosen length grows to the longest of them (up to 2048), a given one stays."""
    if not made or spec.max_length is not None:
        return
    longest = max(len(ex["input_ids"]) for ex in made)
    if longest > plan.max_length:
        plan.max_length = min(2048, longest)
        plan.why["max_length"] += f"; {longest} for the longest {what}"


def _replay(spec: TrainSpec, base, plan, user_rows: int, home, log: Callable) -> list[Record]:
    """The replay rows the plan asks for: the root base's own answers to bundled general prompts."""
    from lmtailor.train.replay import replay_count, replay_rows

    n = replay_count(plan.replay_ratio, user_rows)
    if not n:
        return []
    try:
        rows = replay_rows(core.root_base(spec, base), n, spec.seed, home, log, spec.trust_remote_code)
    except LmtailorError as e:
        if spec.replay_ratio is not None:  # asked for: the run cannot do what it was told
            raise
        log(f"{e}; training without replay")  # the rule's default: said, and the run goes on
        plan.replay_ratio = 0.0
        plan.why["replay_ratio"] = f"0: {e}"
        for key, (value, why) in plan.without_replay.items():  # the rule's choices without replay's rows
            setattr(plan, key, value)
            if why:
                plan.why[key] = why
        return []
    log(f"replay: {len(rows)} rows of the base's own answers to general prompts ({plan.replay_ratio:.0%})")
    return rows


def packed_row_length(max_length: int, per_rank: int, lengths: list[int]) -> int:
    """Tokens of a packed row: bins of about `per_rank` samples each, one row per process and step (samples
    kept apart by the mask); the memory estimate (train/memory.py) assumes the same rows."""
    mean = sum(lengths) / max(1, len(lengths))
    return max(max_length, int(math.ceil(per_rank * mean)))


def data_name(spec: TrainSpec) -> str:
    """The training data in a message: its file, or the files of a mixture joined by ' + '."""
    return spec.data if isinstance(spec.data, str) else " + ".join(s.path for s in spec.data)


def load_train_val(spec: TrainSpec) -> tuple[list[Record], list[Record]]:
    """The training and validation rows. Several files (`data` a list) are mixed by data/mix.py: the training list
    is then a MixedRows, which carries the record of the draw (`.sources`) to the log and the card."""
    from lmtailor.data.formats import load_records

    if not isinstance(spec.data, str):
        from lmtailor.data.mix import load_mixture

        return load_mixture(spec)
    train = load_records(spec.data, fmt=spec.format, on_error=spec.on_error).records
    if not train:
        raise DataError(spec.data, None, "no usable rows")
    return core.split(
        spec, train, lambda path: load_records(path, fmt=spec.format, on_error=spec.on_error).records
    )


def data_card(spec: TrainSpec, train_recs: list[Record], val_recs: list[Record], stats) -> dict:
    """The card's data section (core.data_card), and for several files (data/mix.py) each one's path, sha256,
    rows available and drawn, weight and validation rows, and the seed of the draw; the tokens trained."""
    card = core.data_card(spec, len(train_recs), len(val_recs))
    sources = getattr(train_recs, "sources", None)
    if sources:
        card["sources"] = [s.as_dict() for s in sources]
        card["mix_seed"] = getattr(train_recs, "seed", spec.seed)
        if card["val"] and not spec.val_data:
            card["val"]["by_source"] = {s.name: s.val_rows for s in sources}
    return {**card, "trained_tokens_per_epoch": stats.trained_tokens, "truncated_rows": stats.truncated}


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

        seq_len = packed_row_length(plan.max_length, plan.batch_size // core.world_size(), lengths)
        sets = {name: pack_dataset(ds, seq_len, "bfd") for name, ds in sets.items()}
    if len(sets) > 1:  # not when a val_data file has no `source` keys naming the files: eval_loss says it all
        trainer.add_callback(SourceLossCallback(trainer, sets, out / "metrics.jsonl"))


def _build_trainer(
    run: core.Run, plan, model, rows: Rows, progress: bool, varlen: bool = False, scorers: tuple = ()
):
    """transformers' Trainer over our tokenised rows (TRL's SFT loss path builds fp32 vocab-wide metrics on
    every token, which costs a third of a CPU step; the loss here is the model's own, over the trained positions:
    train/fastpath.py). The head runs over every position: over the trained ones only (`logits_to_keep`) the step
    was 1.14x faster with the same loss, but bf16 gradients 0.6% apart, and in four paired runs the quickstart
    answered 4-10 points fewer (docs/defaults.md)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from lmtailor.train.collate import PackedCollator, PackedTrainer, PaddedCollator, can_share_prefix

    spec, tok = run.spec, run.tok
    train_ds = Dataset.from_list(rows.train)
    val_ds = Dataset.from_list(rows.val) if rows.val else None
    per_rank = _per_rank(spec, plan)  # samples each process takes per step: the global batch is the spec's
    if spec.packing:
        from trl import pack_dataset

        seq_len = packed_row_length(plan.max_length, per_rank, rows.lengths)
        train_ds = pack_dataset(train_ds, seq_len, "bfd")
        val_ds = pack_dataset(val_ds, seq_len, "bfd") if val_ds is not None else None
        share = can_share_prefix(model.config, spec.trust_remote_code)
        collator, per_device = PackedCollator(tok.pad_token_id, varlen=varlen, share_prefix=share), 1
    else:
        collator, per_device = PaddedCollator(tok.pad_token_id), per_rank
    steps_per_epoch = max(1, math.ceil(len(train_ds) / (per_device * spec.grad_accum * core.world_size())))
    args = core.training_args(
        TrainingArguments, run, learning_rate=plan.learning_rate, epochs=plan.epochs, per_device=per_device,
        steps_per_epoch=steps_per_epoch, has_val=val_ds is not None, neftune_noise_alpha=plan.neftune_alpha or None,
        include_num_input_tokens_seen="all" if spec.packing else "non_padding", remove_unused_columns=False,
    )  # fmt: skip
    run.out.mkdir(parents=True, exist_ok=True)
    return (PackedTrainer if spec.packing else Trainer)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=collator,
        callbacks=core.callbacks(run, progress, val_ds is not None, scorers),
        processing_class=tok,  # checkpoints carry the tokenizer, so each one loads (and serves) alone
    )


def _per_rank(spec: TrainSpec, plan) -> int:
    """The batch's share of each process; a chosen batch is rounded up so every process gets rows."""
    world = core.world_size()
    if not spec.batch_size and plan.batch_size % world:
        plan.batch_size += world - plan.batch_size % world
        plan.why["batch_size"] = (
            f"{plan.batch_size}: {plan.why.get('batch_size', '')}, rounded to {world} processes"
        )
    if plan.batch_size % world:
        raise LmtailorError(
            f"batch size {plan.batch_size} does not split evenly over {world} processes: give --batch-size a "
            f"multiple of {world}"
        )
    return plan.batch_size // world
