"""`run_sft(spec)`: the one entry point of training, for every method (the name is from when SFT was the only
one). The spec's method picks its module from METHODS; each method module imports train/core.py (what every
method does alike) and none of the others, and none of them imports this one.

    sft            train/supervised.py   our tokenised rows, transformers' Trainer
    dpo            train/dpo.py          preference rows, TRL's DPOTrainer
    reinforcement  train/rft.py          prompt rows and a grader, TRL's GRPOTrainer

Then, whatever the method, what the run cost: retention (core.add_retention), once the model is saved and the
method's models are freed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from lmtailor.specs import TrainSpec

METHODS = {
    "sft": "lmtailor.train.supervised",
    "dpo": "lmtailor.train.dpo",
    "reinforcement": "lmtailor.train.rft",
}


def run_sft(
    spec: TrainSpec,
    home: str | Path | None = None,
    progress: bool = True,
    log: Callable = print,
    callbacks: list | None = None,
) -> Path:
    """Train `spec.model` on `spec.data` by `spec.method`; return the tuned model folder. `callbacks`: extra
    transformers TrainerCallbacks (the job worker's: events, checkpoints, pause)."""
    from lmtailor.train import core

    method = importlib.import_module(METHODS[spec.method])
    out = method.run(spec, home=home, progress=progress, log=log, callbacks=callbacks)
    if spec.retention and core.is_rank0():  # a finished model first; what it cost is added to its card
        core.free_memory()  # the method's models are gone with its frame: the two models retention loads need it
        core.add_retention(spec, out, home, log)
    return out
