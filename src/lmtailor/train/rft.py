"""`method: reinforcement`: reinforcement fine-tuning with TRL's GRPOTrainer, rewarded by an OpenAI grader.

    run_rft(spec)  rows {"messages": [... ending with user], any other keys} (the keys are the grader's
                   `item`) → the grader checked → GRPO: `num_generations` answers per prompt, each graded
                   (graders/core.grade), advantages within the group → validation reward every
                   `eval_steps` → saved like SFT, with a card

OpenAI's reinforcement hyperparameters map as: n_epochs → epochs, batch_size → prompts per step,
learning_rate_multiplier → × the learning rate, eval_interval → eval_steps, eval_samples → validation rows
graded, compute_multiplier → num_generations (4 × it, at least 2). No KL term (beta 0, TRL's default for
GRPO); answers sampled at temperature 1, up to `max_completion_length` tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from lmtailor.errors import DataError, SpecError
from lmtailor.specs import TrainSpec

LEARNING_RATE = {"lora": 2e-5, "full": 1e-6, "freeze": 1e-6}


def load_prompts(path: str | Path, on_error: str = "fail") -> list[dict]:
    """Rows with `messages` ending in a user turn; each bad row named by file and line."""
    from lmtailor.data.formats import BadRowsError, read_rows

    rows, errors = [], []
    for line, row in read_rows(path):
        if isinstance(row, DataError):
            errors.append(row)
            continue
        messages = row.get("messages")
        why = None
        if not isinstance(messages, list) or not messages:
            why = 'no messages: a reinforcement row is {"messages": [...], ...the grader\'s item keys}'
        elif not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
                     ("system", "user", "assistant", "developer") for m in messages):  # fmt: skip
            why = "every message needs a role and text content"
        elif messages[-1]["role"] != "user":
            why = f"the messages must end with a user turn for the model to answer, not {messages[-1]['role']!r}"
        if why:
            errors.append(DataError(str(path), line, why))
        else:
            rows.append(row)
    if errors and on_error == "fail":
        raise BadRowsError(path, errors)
    if not rows:
        raise DataError(str(path), None, "no usable rows")
    return rows


def reward_function(grader: dict, ask=None):
    """A TRL reward function: each completion graded against its row (the `item` column, JSON)."""
    from lmtailor.graders.core import grade, sample_namespace

    def grader_reward(prompts, completions, item, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        return [
            grade(grader, sample_namespace(t), json.loads(i), ask).reward
            for t, i in zip(texts, item, strict=True)
        ]

    return grader_reward


def run_rft(spec: TrainSpec, home=None, log: Callable[[str], None] = print, progress: bool = True,
            callbacks: list | None = None) -> Path:  # fmt: skip
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from lmtailor.data.split import split_records
    from lmtailor.graders.core import check
    from lmtailor.graders.routes import make_ask
    from lmtailor.train.dpo import setup, train_and_save
    from lmtailor.train.sft import rows_record

    if not spec.grader:
        raise SpecError("method reinforcement needs a grader (an OpenAI grader object)")
    if why := check(spec.grader):
        raise SpecError(why)
    torch.manual_seed(spec.seed)
    train = load_prompts(spec.data, spec.on_error)
    val = load_prompts(spec.val_data, spec.on_error) if spec.val_data else []
    if not spec.val_data and spec.val_ratio > 0:
        parts = split_records(train, ratios=(1 - spec.val_ratio, spec.val_ratio, 0.0), seed=spec.seed)
        train, val = parts["train"], parts["val"]
    if spec.eval_samples:
        val = val[: spec.eval_samples]
    base, out, tok, device, precision, strategy, lr, model, trainable, total = setup(
        spec, home, LEARNING_RATE
    )
    gens = spec.num_generations
    batch = (spec.batch_size or 2) * gens  # answers a step: batch_size prompts x num_generations
    epochs = spec.epochs or 1
    log(f"reinforcement on {spec.model}, strategy {strategy}: {trainable / 1e6:.2f}M trainable; {len(train)} "
        f"prompts, {len(val)} for validation; grader {spec.grader['type']} {spec.grader['name']!r}; "
        f"{gens} answers a prompt, lr {lr:g}")  # fmt: skip

    def rows(items):
        return [{"prompt": r["messages"], "item": json.dumps({k: v for k, v in r.items() if k != "messages"},
                                                              ensure_ascii=False)} for r in items]  # fmt: skip

    ask = make_ask(os.environ.get("LMTAILOR_GRADER_BASE_URL", "http://127.0.0.1:8000/v1"),
                   os.environ.get("LMTAILOR_API_KEY"))  # fmt: skip
    reward = reward_function(spec.grader, ask)
    steps_per_epoch = max(1, -(-len(train) * gens // batch))
    args = GRPOConfig(
        output_dir=str(out / "checkpoints"), learning_rate=lr, num_train_epochs=epochs,
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch, num_generations=gens,
        max_completion_length=spec.max_completion_length, temperature=1.0, beta=0.0,
        logging_steps=1, eval_strategy="steps" if val else "no", eval_steps=spec.eval_steps or steps_per_epoch,
        eval_on_start=bool(val),  # the validation reward before any step: the baseline the run is measured against
        save_strategy="steps", save_steps=spec.save_steps or max(steps_per_epoch, 10),
        save_total_limit=spec.save_total_limit, bf16=precision == "bf16", use_cpu=device == "cpu", seed=spec.seed,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, lr_scheduler_type=spec.scheduler,
        warmup_steps=int(spec.warmup_ratio * steps_per_epoch * epochs),
    )  # fmt: skip
    train_rows = rows(train)
    record = rows_record(train_rows, spec, batch, num_generations=gens)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(train_rows),
                          eval_dataset=Dataset.from_list(rows(val)) if val else None, processing_class=tok)  # fmt: skip
    chosen = {"learning_rate": lr, "epochs": epochs, "batch_size": batch, "num_generations": gens,
              "precision": precision}  # fmt: skip
    return train_and_save(trainer, spec, base, tok, out, "reinforcement", strategy, chosen, (len(train), len(val)),
                          (trainable, total), progress, callbacks, log, record, home)  # fmt: skip
