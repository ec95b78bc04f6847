"""The rule that picks strategy, learning rate, epochs and batch size from the data and model size.

Measured on the quickstart facts and documented in docs/defaults.md. What the measurements say:
- A small model taught facts from a few phrasings answers new phrasings best when only its MLP blocks
  train (attention frozen): the relation a question asks about is still read by the pretrained attention,
  so a new wording reaches the same stored fact. Training attention too (full or LoRA on all layers)
  lets the model key facts on the training wording, and confuse them on new wordings.
- About 150 optimizer steps of 8 samples: fewer leave facts unlearned (114 steps, three passes over six
  phrasings of each fact, answered 82.5% over four seeds; 152 steps, four passes, 86.5%, every seed >= 80%).
- NEFTune noise on the embeddings (alpha 5) helps a little; noisy copies of the questions did not.
- Each answer again as the reply to "Tell me a fact." (recitations) answers more new phrasings at every
  seed tried (mean 74.7% against 65.3% over three seeds), for twice the steps; only for data that looks
  like facts asked as questions.
So: small data sets train many epochs toward that step count; large ones a few epochs; large models
(over 1.5B parameters) use LoRA, which fits in memory and is what one would run on a GPU anyway.
Measured on both sides since (what tuning gained and what it cost the base, docs/defaults.md "Retention"): with
replay of the base's own answers (on by default), LoRA on all linear layers at lr 2e-3 answered as many new
phrasings as the MLP blocks or more and kept more of the base, over three seeds of three data sets; so a small
model on small data trains LoRA where it replays, and the MLP blocks (with recitations) where it does not.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lmtailor.data.augment import CJK, RECITE_PROMPT
from lmtailor.specs import TrainSpec
from lmtailor.train.replay import replay_count

# parameters up to which a small-data run trains LoRA at 2e-3 (with replay) or the MLP blocks
SMALL_MODEL = 1.5e9
SMALL_DATA = 5000  # rows up to which those are the default (beyond: full, or LoRA above SMALL_MODEL)
TARGET_STEPS = 150  # optimizer steps a small data set is trained for
MIN_EPOCHS, MAX_EPOCHS = 2, 12
# "lora-small": LoRA on a small model and small data with replay (docs/defaults.md, "Retention": at 1e-3 it kept as
# much and answered fewer new phrasings; the rate, not LoRA, cost the answers)
LEARNING_RATE = {"mlp": 3e-4, "full": 1e-4, "freeze": 2e-4, "lora": 1e-3, "qlora": 1e-3, "lora-small": 2e-3}
NEFTUNE_ALPHA = 5.0
AUGMENT_COPIES = 0
# Recitations (each answer also as the reply to "Tell me a fact."), with the MLP-only strategy, on data that
# is facts asked as questions: at least this share of single-turn rows; at least this many distinct answers
# where answers repeat, and this share of the rows (a label set repeats a few answers over all its rows; a fact set may repeat one
# answer over a few wordings of its question); answers of this many words (Chinese: characters) at the
# median (a statement names its subject; "Paris." does not, and "Tell me a fact." -> "Paris." teaches
# nothing; an essay is not a fact); and no more rows than this (recitations double the steps).
RECITE_SINGLE, RECITE_MIN_DISTINCT, RECITE_DISTINCT, RECITE_MAX_ROWS = 0.9, 8, 0.1, 1000
RECITE_WORDS = (5, 60)
# Replay: this share of the training mixture is the base model's own answers to bundled general prompts
# (train/replay.py), so the tuned model keeps more of what the base knew (docs/defaults.md, "Retention"). With
# it the rule recites no more: the recitations teach a general request ("Tell me a fact.") to answer with the
# user's facts, the very drift replay is there to undo, and they double the steps.
REPLAY_RATIO = 0.2


@dataclass
class Plan:
    strategy: str
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    neftune_alpha: float
    augment_copies: int
    recite: bool
    freeze_modules: list[str] | None
    why: dict[str, str]
    replay_ratio: float = 0.0
    # the rule's choices had replay been off ({"recite": (value, why), "epochs": (value, why)}, those it chose):
    # what a run falls back to when the rule's replay cannot be done (a base without a chat template)
    without_replay: dict[str, tuple] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def choose(
    spec: TrainSpec,
    n_rows: int,
    lengths: list[int],
    n_params: int,
    on_gpu: bool = False,
    answers: list[str] | None = None,
) -> Plan:
    """Fill every field the spec leaves as None; `why` says how each was chosen.

    `answers`: the answers of the single-turn rows (data.augment.single_answer), for the recitation rule."""
    why: dict[str, str] = {}
    replay = spec.replay_ratio
    if replay is None:
        replay = REPLAY_RATIO
        why["replay_ratio"] = (
            f"{replay:g}: the base's own answers to general prompts, {replay:.0%} of the rows, so the tuned "
            "model keeps more of what the base knew"
            if replay
            else "0: off"
        )
    strategy, modules = spec.strategy, spec.freeze_modules
    small = n_params <= SMALL_MODEL and n_rows <= SMALL_DATA
    kind = strategy
    mlp_why = "freeze, MLP blocks only (attention frozen): {size}; answers new phrasings best{without}"
    if strategy == "auto":
        size = f"{n_params / 1e6:.0f}M parameters, {n_rows} rows"
        if n_params > SMALL_MODEL:
            strategy = kind = "lora"
            why["strategy"] = f"lora: {size} (over 1.5B parameters)"
        elif small and replay:
            strategy = "lora"
            why["strategy"] = (
                f"lora: {size} with replay; answers new phrasings as well as the MLP blocks or better and keeps "
                "more of what the base knew (docs/defaults.md)"
            )
        elif small:
            strategy, modules, kind = "freeze", ["mlp"], "mlp"
            why["strategy"] = mlp_why.format(size=size, without="")
        else:
            strategy = kind = "full"
            why["strategy"] = f"full: {size} (a large data set on a small model)"
    if strategy == "lora" and small and replay:
        kind = "lora-small"
    batch = spec.batch_size or (8 if n_rows < 2000 else 16)
    if not spec.batch_size:
        why["batch_size"] = f"{batch}: {n_rows} rows"
    lr = spec.learning_rate
    if lr is None:
        lr = LEARNING_RATE[kind]
        why["learning_rate"] = f"{lr:g} for {kind}"
    if spec.learning_rate_multiplier != 1.0:
        lr *= spec.learning_rate_multiplier
        why["learning_rate"] = (
            f"{lr:g}: {why.get('learning_rate', spec.learning_rate)} x multiplier {spec.learning_rate_multiplier:g}"
        )
    max_length = spec.max_length
    if max_length is None:
        longest = max(lengths) if lengths else 512
        max_length = min(2048, max(64, longest))
        why["max_length"] = f"{max_length}: longest sample ({longest} tokens), capped at 2048"
    neftune = spec.neftune_alpha if spec.neftune_alpha is not None else NEFTUNE_ALPHA
    copies = spec.augment_copies if spec.augment_copies is not None else AUGMENT_COPIES
    epochs, epochs_alone = spec.epochs, None
    if epochs is None:  # over the whole mixture: replay's rows take the user's steps, they do not add to them
        epochs_alone = auto_epochs(n_rows, batch * spec.grad_accum)
        epochs, why["epochs"] = auto_epochs(n_rows, batch * spec.grad_accum, replay_count(replay, n_rows))
    recite, recite_alone = spec.recite, None
    if recite is None:
        recite_alone = _recite(spec.strategy == "auto" and small, n_rows, answers or [])  # the MLP rule's
        recite, why["recite"] = recite_alone
        if replay and recite:
            recite, why["recite"] = (
                False,
                (
                    "off: replay is on (recitations teach a general request to answer with your facts, which "
                    "replay is there to undo; docs/defaults.md)"
                ),
            )
    recites = "; the recitations take as many steps again"
    if recite and "epochs" in why:
        why["epochs"] += recites
    if (
        epochs_alone and recite_alone and recite_alone[0]
    ):  # without replay the rule would recite: say so there too
        epochs_alone = (epochs_alone[0], epochs_alone[1] + recites)
    alone = {"recite": recite_alone, "epochs": epochs_alone}
    # measured with replay only; without its rows the rule's choices are those before it
    if kind == "lora-small":
        fallback = "lora"
        if spec.strategy == "auto":
            size = f"{n_params / 1e6:.0f}M parameters, {n_rows} rows"
            alone["strategy"] = ("freeze", mlp_why.format(size=size, without=" (no replay)"))
            alone["freeze_modules"], fallback = (["mlp"], None), "mlp"
        if spec.learning_rate is None:
            rate = LEARNING_RATE[fallback] * spec.learning_rate_multiplier
            alone["learning_rate"] = (rate, f"{rate:g} for {fallback}")
    return Plan(strategy, lr, epochs, batch, max_length, neftune, copies, recite, modules, why, replay,
                {k: v for k, v in alone.items() if v is not None})  # fmt: skip


def auto_epochs(rows: int, per_step: int, replayed: int = 0) -> tuple[float, str]:
    """Epochs for about TARGET_STEPS optimizer steps over `rows` rows and `replayed` replay rows, `per_step` rows
    a step, and why."""
    steps_per_epoch = max(1, math.ceil((rows + replayed) / per_step))
    nearest = math.floor(TARGET_STEPS / steps_per_epoch + 0.5)  # about the target: 3.2 epochs are 3
    epochs = float(min(MAX_EPOCHS, max(MIN_EPOCHS, nearest)))
    return epochs, (
        f"{epochs:g}: about {TARGET_STEPS} steps at {steps_per_epoch} steps per epoch"
        f"{f' ({rows} rows and {replayed} replayed)' if replayed else ''}, "
        f"within [{MIN_EPOCHS}, {MAX_EPOCHS}]"
    )


def _recite(mlp_rule: bool, n_rows: int, answers: list[str]) -> tuple[bool, str]:
    """Whether the data looks like facts asked as questions: distinct statements answering single questions."""
    if not mlp_rule:
        return False, "off: measured only with the rule's MLP-only strategy for small data"
    if n_rows > RECITE_MAX_ROWS:
        return False, f"off: {n_rows} rows (recitations double the steps; on up to {RECITE_MAX_ROWS})"
    if not answers or len(answers) < RECITE_SINGLE * n_rows:
        return False, f"off: {len(answers)} of {n_rows} rows are one question and one answer"
    distinct = len(set(answers))
    repeated = distinct < len(answers)
    if distinct < RECITE_DISTINCT * len(answers) or (repeated and distinct < RECITE_MIN_DISTINCT):
        return (
            False,
            f"off: {distinct} distinct answers in {len(answers)} rows (a few answers repeated: labels)",
        )
    median = sorted(_words(a) for a in answers)[len(answers) // 2]
    low, high = RECITE_WORDS
    if not low <= median <= high:
        return False, f"off: answers of {median} words (median), not statements of {low} to {high}"
    return True, (
        f"on: {distinct} answers of {median} words (median) also train as the reply to "
        f'"{RECITE_PROMPT}" (twice the steps)'
    )


def _words(text: str) -> int:
    """Words, counting each Chinese (CJK) character as one."""
    cjk = len(CJK.findall(text))
    return cjk + len(CJK.sub(" ", text).split())
