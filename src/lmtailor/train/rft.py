"""`method: reinforcement`: reinforcement fine-tuning with TRL's GRPOTrainer, rewarded by an OpenAI grader.

    run(spec)  rows {"messages": [... ending with user], any other keys} (the keys are the grader's `item`)
               → the grader checked → GRPO: `num_generations` answers per prompt, each graded
               (graders/core.grade), advantages within the group → validation reward every `eval_steps`
               → core.train, core.save

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
from lmtailor.train import core

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


def run(spec: TrainSpec, home=None, progress: bool = True, log: Callable[[str], None] = print,
        callbacks: list | None = None) -> Path:  # fmt: skip
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from lmtailor.graders.core import check
    from lmtailor.train.strategy import trainable_summary

    if not spec.grader:
        raise SpecError("method reinforcement needs a grader (an OpenAI grader object)")
    if why := check(spec.grader):
        raise SpecError(why)
    torch.manual_seed(spec.seed)
    train, val = core.split(
        spec, load_prompts(spec.data, spec.on_error), lambda p: load_prompts(p, spec.on_error)
    )
    val = val[: spec.eval_samples] if spec.eval_samples else val
    run = core.start(spec, home, log)
    model, strategy, lr = core.load_policy(run, LEARNING_RATE)
    trainable, total = trainable_summary(model)
    gens = spec.num_generations
    batch = (spec.batch_size or 2) * gens  # answers a step: batch_size prompts x num_generations
    epochs = spec.epochs or 1
    log(f"reinforcement on {spec.model}, strategy {strategy}: {trainable / 1e6:.2f}M trainable; {len(train)} "
        f"prompts, {len(val)} for validation; grader {spec.grader['type']} {spec.grader['name']!r}; "
        f"{gens} answers a prompt, lr {lr:g}")  # fmt: skip
    args = core.training_args(
        GRPOConfig, run, learning_rate=lr, epochs=epochs, per_device=batch,
        steps_per_epoch=max(1, -(-len(train) * gens // (batch * spec.grad_accum))), has_val=bool(val), logging_steps=1,
        num_generations=gens, max_completion_length=spec.max_completion_length, temperature=1.0, beta=0.0,
        eval_on_start=bool(val),  # the validation reward before any step: the baseline the run is measured against
    )  # fmt: skip
    train_rows = rows(train)
    trainer = GRPOTrainer(model=model, reward_funcs=[_reward(spec)], args=args,
                          train_dataset=Dataset.from_list(train_rows),
                          eval_dataset=Dataset.from_list(rows(val)) if val else None, processing_class=run.tok,
                          callbacks=core.callbacks(run, progress, bool(val)))  # fmt: skip
    metrics = core.train(
        run, trainer, core.rows_record(train_rows, spec, batch, num_generations=gens), callbacks
    )
    metrics.update({"trainable_parameters": trainable, "total_parameters": total})
    card = {"hyperparameters": {"learning_rate": lr, "epochs": epochs, "batch_size": batch, "num_generations": gens},
            "why": {}, "metrics": metrics, "data": core.data_card(spec, len(train), len(val))}  # fmt: skip
    return core.save(run, trainer, strategy, card)


def rows(items: list[dict]) -> list[dict]:
    """Prompt rows as GRPOTrainer reads them: the messages, and the row's other keys as JSON (the grader's item)."""
    return [{"prompt": r["messages"], "item": json.dumps({k: v for k, v in r.items() if k != "messages"},
                                                          ensure_ascii=False)} for r in items]  # fmt: skip


def _reward(spec: TrainSpec):
    """The grader as a reward function; a score_model or label_model grader asks the model at
    LMTAILOR_GRADER_BASE_URL (default: a local lmtailor serve)."""
    from lmtailor.graders.ask import make_ask

    ask = make_ask(os.environ.get("LMTAILOR_GRADER_BASE_URL", "http://127.0.0.1:8000/v1"),
                   os.environ.get("LMTAILOR_API_KEY"))  # fmt: skip
    return reward_function(spec.grader, ask)
