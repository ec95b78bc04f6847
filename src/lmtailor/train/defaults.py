"""The rule that picks strategy, learning rate, epochs and batch size from the data and model size.

Measured on the quickstart facts and documented in docs/defaults.md. The idea: a small model has to see a
small set of facts many times, with a learning rate high enough to move it, before it answers new
phrasings of them; a large set needs fewer passes. So passes shrink as the data grows, and full
fine-tuning is preferred where it is cheap (small models), LoRA with a higher rate elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from lmtailor.specs import TrainSpec

SMALL_MODEL = 1.5e9  # parameters up to which full fine-tuning is the default
TARGET_STEPS = 300  # optimizer steps a small data set is trained for
MIN_EPOCHS, MAX_EPOCHS = 2, 12
NEFTUNE_ALPHA = 0.0
AUGMENT_COPIES = 0


@dataclass
class Plan:
    strategy: str
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    neftune_alpha: float
    augment_copies: int
    why: dict[str, str]

    def as_dict(self) -> dict:
        return asdict(self)


def choose(spec: TrainSpec, n_rows: int, lengths: list[int], n_params: int, on_gpu: bool = False) -> Plan:
    """Fill every field the spec leaves as None; `why` says how each was chosen."""
    why: dict[str, str] = {}
    strategy = spec.strategy
    if strategy == "auto":
        strategy = "full" if n_params <= SMALL_MODEL else "lora"
        why["strategy"] = (
            f"{strategy}: {n_params / 1e6:.0f}M parameters ({'<=' if strategy == 'full' else '>'} 1.5B)"
        )
    batch = spec.batch_size or (8 if n_rows < 2000 else 16)
    if not spec.batch_size:
        why["batch_size"] = f"{batch}: {'small' if batch == 8 else 'larger'} data set ({n_rows} rows)"
    steps_per_epoch = max(1, math.ceil(n_rows / (batch * spec.grad_accum)))
    epochs = spec.epochs
    if epochs is None:
        epochs = float(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch))))
        why["epochs"] = (
            f"{epochs:g}: about {TARGET_STEPS} steps at {steps_per_epoch} steps per epoch, within [{MIN_EPOCHS}, {MAX_EPOCHS}]"
        )
    lr = spec.learning_rate
    if lr is None:
        lr = 5e-5 if strategy == "full" else (1e-3 if strategy == "lora" else 1e-4)
        why["learning_rate"] = f"{lr:g} for {strategy}"
    max_length = spec.max_length
    if max_length is None:
        longest = max(lengths) if lengths else 512
        max_length = min(2048, max(64, longest))
        why["max_length"] = f"{max_length}: longest sample ({longest} tokens), capped at 2048"
    neftune = spec.neftune_alpha if spec.neftune_alpha is not None else NEFTUNE_ALPHA
    copies = spec.augment_copies if spec.augment_copies is not None else AUGMENT_COPIES
    return Plan(strategy, lr, epochs, batch, max_length, neftune, copies, why)
