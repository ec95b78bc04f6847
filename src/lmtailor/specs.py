"""Job specs: validated once at the door (YAML, flags, JSON body), then trusted. Unknown keys are errors."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmtailor.errors import LmtailorError, SpecError

# The metrics' names: what a spec may ask for (evaluate/metrics.py computes them and imports these).
CLASSIFICATION = ("accuracy", "precision", "recall", "f1")
METRIC_NAMES = ("exact_match", "contains", *CLASSIFICATION, "rouge_l", "bleu", "chrf", "perplexity")
# Scored by evaluate/judge.py with a judge model (`lmtailor eval --judge-model`), never picked automatically.
JUDGE = "judge"
EVAL_METRIC_NAMES = (*METRIC_NAMES, JUDGE)


def check_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The metric names once each, in order; an unknown name (or judge, which needs a judge model) is an error."""
    if JUDGE in names:
        raise LmtailorError(
            "metric judge needs a judge model: it is scored by `lmtailor eval --judge-model` only"
        )
    unknown = [n for n in names if n not in METRIC_NAMES]
    if unknown:
        raise LmtailorError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_NAMES)}")
    return list(dict.fromkeys(names))


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSource(_Spec):
    """One file of a training mixture (`data` given as a list) and the share of the mixture it gets."""

    path: str = Field(..., description="training file")
    weight: float | None = Field(
        None, gt=0, le=1, description="share of the mixture, 0 < w <= 1 (none: a share of what weights leave)"
    )
    name: str | None = Field(
        None, description="what the log, the card and eval_<name>_loss call it (default: the file's stem)"
    )


_NUMERIC = re.compile(r"[+-]?\.?\d")  # what the text after a value's last ':' starts with to be its weight


def parse_sources(values: list) -> list[DataSource]:
    """Training files as given (`FILE[:WEIGHT]`, {path, weight} or DataSource) as DataSources; a ValueError of one
    line otherwise, starting with the value it is about. The text after the last ':' is a weight when it looks
    like a number (`a.jsonl:0.3`, `a.jsonl:-1`); else it is part of the path (`C:\\d\\a.jsonl`, `logs:v2.jsonl`),
    and so is all of a value that names an existing file."""
    if not values:
        raise ValueError("give at least one training file")
    sources, seen = [], {}
    for value in values:
        source = _source(value)
        key = os.path.normcase(os.path.abspath(os.path.expanduser(source.path)))
        if key in seen:
            raise ValueError(f"{_shown(value)}: the same file twice (first as {seen[key]})")
        seen[key] = _shown(value)
        sources.append(source)
    given = [s.weight for s in sources if s.weight is not None]
    rest = [s.path for s in sources if s.weight is None]
    if rest and sum(given) >= 1 - 1e-9:
        raise ValueError(
            f"weights {' + '.join(f'{w:g}' for w in given)} sum to {sum(given):g}, leaving no share for {rest[0]} "
            "(files without a weight share what the weights leave)"
        )
    return sources


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else str(value.get("path") if isinstance(value, dict) else value)


def _source(value: Any) -> DataSource:
    if isinstance(value, DataSource):
        return value
    if isinstance(value, dict):
        if (
            set(value) - {"path", "weight", "name"}
            or not isinstance(value.get("path"), str)
            or not value["path"]
        ):
            raise ValueError(f"{value}: a training file is FILE, FILE:WEIGHT or {{path: FILE, weight: W}}")
        weight = value.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
            raise ValueError(f"{value['path']}: weight {weight!r} is not a number")
        name = value.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"{value['path']}: name {name!r} is not a name")
        return DataSource(path=value["path"], weight=_weight(value["path"], weight), name=name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r}: a training file is FILE, FILE:WEIGHT or {{path: FILE, weight: W}}")
    path, colon, tail = value.rpartition(":")
    if not colon or Path(value).expanduser().is_file() or (tail and not _NUMERIC.match(tail)):
        return DataSource(path=value)
    if not tail:
        raise ValueError(f"{value}: no weight after ':' (write FILE or FILE:WEIGHT, e.g. a.jsonl:0.3)")
    if not path:
        raise ValueError(f"{value}: no file before ':'")
    try:
        weight = float(tail)
    except ValueError:
        if Path(path).expanduser().is_file():  # "a.jsonl:0.3x": a weight written wrong
            raise ValueError(f"{value}: weight {tail!r} is not a number") from None
        # "data:2024.jsonl": a name with a colon; a missing one is said as missing
        return DataSource(path=value)
    return DataSource(path=path, weight=_weight(value, weight))


def _weight(shown: str, weight: float | None) -> float | None:
    if weight is not None and not (math.isfinite(weight) and 0 < weight <= 1):
        raise ValueError(
            f"{shown}: weight {weight:g} must be above 0 and at most 1 (its share of the mixture)"
        )
    return weight


def data_option(values: list[str] | None, flag: str = "--data") -> str | list[dict] | None:
    """`--data FILE[:WEIGHT]` as given on a command line (once or more) as the spec's `data`: None when not
    given, the path of one file, else a list of {path, weight}. Each value is checked now, a SpecError naming
    it: a file that does not exist, a bad weight, the same file twice."""
    if not values:
        return None
    try:
        sources = parse_sources(values)
    except ValueError as e:
        raise SpecError(f"{flag} {e}") from None
    for value, source in zip(values, sources, strict=True):
        if not Path(source.path).expanduser().is_file():
            raise SpecError(f"{flag} {value}: file not found: {source.path}")
    return sources[0].path if len(sources) == 1 else [s.model_dump() for s in sources]


class TrainSpec(_Spec):
    """What `lmtailor train` runs. Fields left as None are chosen from the data and model (docs/defaults.md)."""

    model: str = Field(
        "smollm2-135m-instruct", description="catalog name, model folder, tuned model or .gguf file"
    )
    data: str | list[DataSource] = Field(
        ...,
        description="training file (chat, alpaca or sharegpt; JSONL, JSON, CSV or Parquet), or several: a list "
        "of FILE, FILE:WEIGHT or {path, weight, name}, mixed into one run. Without weights every row of every file is "
        "used. A weight (0 < w <= 1) is the share of the mixture its file gets; files without one share what "
        "the weights leave (which must be above 0), by their rows; when every file has a weight and they do not "
        "sum to 1 they are scaled to. The mixture has as many rows as the files together (N): a file gives "
        "round(w x N) rows (at least 1), drawn without replacement, or all its rows repeated and the rest drawn "
        "when that is more than it has; the draw is seeded by `seed` and recorded in the card. `val_ratio` holds "
        "out rows of each file, and validation reports a loss per file",
    )
    val_data: str | None = Field(None, description="validation file; else `val_ratio` of the training rows")
    val_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of training rows held out for validation")
    format: Literal["auto", "chat", "alpaca", "sharegpt"] = Field("auto", description="data format")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="bad rows stop the run, or are skipped and counted"
    )
    output: str | None = Field(None, description="output folder (default: <home>/models/<name>)")
    name: str | None = Field(None, description="name of the tuned model in the home (default: derived)")
    method: Literal["sft", "dpo", "reinforcement"] = Field(
        "sft",
        description="sft: learn the answers; dpo: prefer `chosen` over `rejected` (preference data); "
        "reinforcement: sample answers and reward them with `grader` (GRPO)",
    )
    beta: float = Field(
        0.1, gt=0, description="dpo: how far the model may move from the reference (higher: less)"
    )
    grader: dict[str, Any] | None = Field(
        None, description="reinforcement: an OpenAI grader object (docs/graders.md)"
    )
    num_generations: int = Field(
        4, ge=2, description="reinforcement: answers sampled per prompt and compared"
    )
    max_completion_length: int = Field(
        64, ge=1, description="reinforcement: longest sampled answer in tokens"
    )
    eval_samples: int | None = Field(
        None, ge=1, description="reinforcement: validation rows graded at each evaluation"
    )
    strategy: Literal["auto", "lora", "qlora", "full", "freeze"] = Field(
        "auto",
        description="auto: models up to 1.5B on up to 5000 rows train LoRA at 2e-3 with replay, their MLP blocks "
        "without it; on more rows all weights; larger models: LoRA; qlora: LoRA over a 4-bit base (bitsandbytes, "
        "CUDA only)",
    )
    freeze_layers: int | None = Field(None, ge=1, description="freeze: train only the last N decoder layers")
    freeze_modules: list[str] | None = Field(
        None, description="freeze: train only parameters whose name contains one of these"
    )
    lora_r: int = Field(32, ge=1, description="LoRA rank: higher learns more, costs memory")
    lora_alpha: int | None = Field(None, ge=1, description="LoRA alpha (default 2 x rank)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    lora_target_modules: list[str] | str = Field("all-linear", description="modules LoRA wraps")
    learning_rate: float | None = Field(
        None, gt=0, description="peak learning rate (auto from strategy and size)"
    )
    learning_rate_multiplier: float = Field(
        1.0,
        gt=0,
        description="scales the learning rate, chosen or given (OpenAI's fine-tuning hyperparameter)",
    )
    epochs: float | None = Field(None, gt=0, description="passes over the data (auto from data size)")
    batch_size: int | None = Field(None, ge=1, description="samples per optimizer step (auto)")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="fraction of steps spent warming up")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    augment_copies: int | None = Field(
        None,
        ge=0,
        description="noisy copies of each row's questions (auto: more for small data); 0 turns it off",
    )
    neftune_alpha: float | None = Field(
        None, ge=0, description="NEFTune embedding noise (auto); 0 turns it off"
    )
    recite: bool | None = Field(
        None,
        description='also train each answer as the reply to "Tell me a fact." (auto: on with the MLP-only strategy '
        "for up to 1,000 question-answer rows whose answers are statements of 5-60 words, and replay off)",
    )
    replay_ratio: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="share of the training rows that are the base model's own answers to bundled general prompts "
        "(self-distillation replay: keeps more of what the base knew; 0 turns it off; auto: 0.2 for sft with a "
        "base that has a chat template of its own)",
    )
    max_length: int | None = Field(
        None, ge=8, description="token limit per sample (auto: longest sample, <= 2048)"
    )
    packing: bool = Field(
        True, description="pack samples into padding-free batches; samples never attend to each other"
    )
    seed: int = Field(42)
    retention: bool = Field(
        True,
        description="at the end, measure what tuning cost: the share of bundled general probes the base answered "
        "that the tuned model still answers (about a minute for a 135M model on 2 cores)",
    )
    eval_steps: int | None = Field(None, ge=1, description="validate every N steps (default: each epoch)")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after N validations without improvement (sft and dpo)"
    )
    keep_best: bool = Field(False, description="end with the best checkpoint by `best_metric` (sft and dpo)")
    eval_metrics: list[str] | None = Field(
        None,
        description="sft: also generate on the validation rows at each evaluation and score them (e.g. [contains])",
    )
    best_metric: str | None = Field(
        None, description="what keep_best and early stopping watch (default eval_loss)"
    )
    save_steps: int | None = Field(
        None, ge=1, description="checkpoint every N steps (default: about 3 per run)"
    )
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept on disk while training")
    keep_checkpoints: bool = Field(
        False,
        description="keep checkpoints after a finished run (they hold optimizer state; a new run into the same "
        "output removes them)",
    )
    resume: bool = Field(
        False,
        description="continue from the last checkpoint in the output folder (same rows, batching, seed)",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the hardware has it"
    )
    trust_remote_code: bool = Field(
        False, description="run code shipped with the model (off unless you trust it)"
    )
    merge: bool = Field(
        True, description="also save LoRA weights merged into the base (plain from_pretrained loads it)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, about 30% slower"
    )
    devices: int = Field(
        1, ge=1, description="processes (GPUs) per node; more than 1 launches through torchrun"
    )
    nodes: int = Field(
        1, ge=1, description="machines taking part; each runs the same command with its node_rank"
    )
    node_rank: int = Field(0, ge=0, description="this machine's number among the nodes (0 is the main one)")
    master_addr: str = Field("127.0.0.1", description="address of node 0, which every node can reach")
    master_port: int = Field(29500, ge=1, le=65535, description="a free port on node 0 for the rendezvous")
    distributed: Literal["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = Field(
        "ddp",
        description="ddp: a full copy per device; fsdp / deepspeed-zero3: weights, gradients and optimizer "
        "sharded; deepspeed-zero2: gradients and optimizer sharded",
    )
    offload: bool = Field(
        False, description="deepspeed-zero3: keep parameters and optimizer states in CPU memory"
    )
    accelerate_config: str | None = Field(
        None, description="an accelerate config file to launch with instead of the generated settings"
    )

    @field_validator("data", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        """A list of training files is checked here (weights, the same file twice); one file is its path."""
        if isinstance(value, dict):  # one file as a mapping: {path: a.jsonl, weight: 0.3}
            value = [value]
        if isinstance(value, str):
            return value
        if not isinstance(value, list | tuple):
            raise ValueError(
                f"{value!r}: a training file is FILE, FILE:WEIGHT or {{path: FILE, weight: W}}, or a list"
            )
        sources = parse_sources(list(value))
        return sources[0].path if len(sources) == 1 else sources

    def data_sources(self) -> list[DataSource]:
        """The training files: one without a weight when `data` is a path."""
        return [DataSource(path=self.data)] if isinstance(self.data, str) else list(self.data)

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if self.method != "sft" and not isinstance(self.data, str):
            raise ValueError(f"method {self.method} trains on one data file; several are mixed for sft only")
        if self.method != "sft" and self.replay_ratio:
            raise ValueError(f"method {self.method}: replay_ratio is for sft (replayed answers are sft rows)")
        if self.strategy != "freeze" and (self.freeze_layers or self.freeze_modules):
            raise ValueError("freeze_layers / freeze_modules need strategy: freeze")
        if self.node_rank >= self.nodes:
            raise ValueError(f"node_rank {self.node_rank}: from 0 to nodes - 1 ({self.nodes - 1})")
        if self.offload and self.distributed != "deepspeed-zero3":
            raise ValueError("offload is for distributed: deepspeed-zero3")
        if self.method != "sft":  # DPO and GRPO train on one process, with lora / full / freeze, for now
            if self.devices * self.nodes > 1 or self.accelerate_config:
                raise ValueError(f"method {self.method} trains on one process: devices and nodes are for sft")
            if self.strategy == "qlora" or self.gradient_checkpointing:
                raise ValueError(f"method {self.method}: qlora and gradient_checkpointing are for sft")
            if self.eval_metrics:
                raise ValueError(
                    f"method {self.method}: eval_metrics is for sft (it scores answers generated for validation "
                    "rows that end in a reference answer)"
                )
        if self.method == "reinforcement" and (self.keep_best or self.early_stopping_patience):
            raise ValueError(
                "method reinforcement: keep_best and early_stopping_patience are for sft and dpo (they watch "
                "eval_loss, and GRPO's validation loss does not measure the answers: watch eval_reward in "
                "metrics.jsonl)"
            )
        if self.eval_metrics is not None or self.best_metric not in (None, "eval_loss", "loss"):
            known = set(self.eval_metrics or [])
            try:
                check_names(sorted(known))
            except LmtailorError as e:
                raise ValueError(str(e)) from None
            if self.best_metric and self.best_metric not in known | {"eval_loss", "loss"}:
                raise ValueError(f"best_metric {self.best_metric!r} must be eval_loss or one of eval_metrics")
        return self


MERGE_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


class MergeSpec(_Spec):
    """What `lmtailor merge` runs: two or more tuned models of one base into one model (through mergekit)."""

    models: list[str] = Field(..., min_length=2, description="tuned models (folders or names in the home)")
    method: Literal["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"] = Field(
        "ties", description="how weights combine: ties/dare resolve conflicts between the models' changes"
    )
    weights: list[float] | None = Field(
        None, description="one weight per model (default: equal); task-vector methods scale each change"
    )
    densities: list[float] | None = Field(
        None, description="ties/dare: fraction of each model's change kept, one per model (default 0.5)"
    )
    base: str | None = Field(
        None, description="the common base for task-vector methods (default: the base named in the cards)"
    )
    t: float = Field(0.5, ge=0, le=1, description="slerp: 0 is the first model, 1 the second")
    normalize: bool | None = Field(
        None, description="divide by the sum of weights (default: mergekit's per method)"
    )
    output: str | None = Field(None, description="output folder (default: <home>/models/<name>)")
    name: str | None = Field(None, description="name of the merged model (default: merged-<method>-<time>)")
    seed: int = Field(0, description="seed of DARE's random drops")
    trust_remote_code: bool = Field(
        False, description="run code shipped with the models (off unless trusted)"
    )

    @model_validator(mode="after")
    def _check(self) -> MergeSpec:
        for key in ("weights", "densities"):
            values = getattr(self, key)
            if values is not None and len(values) != len(self.models):
                raise ValueError(f"{key}: one per model ({len(self.models)}), got {len(values)}")
        if self.densities is not None:
            if self.method not in ("ties", "dare_ties", "dare_linear"):
                raise ValueError(f"densities are for ties, dare_ties and dare_linear, not {self.method}")
            if any(not 0 < d <= 1 for d in self.densities):
                raise ValueError("densities must be in (0, 1]")
        if self.method == "slerp" and len(self.models) != 2:
            raise ValueError(f"slerp merges exactly two models, got {len(self.models)}")
        if self.method == "slerp" and self.weights is not None:
            raise ValueError("slerp takes t, not weights")
        return self


class SynthSpec(_Spec):
    """What `lmtailor data synth` runs: documents -> question-answer pairs, paraphrases, filters, splits."""

    docs: list[str] = Field(..., min_length=1, description="documents or folders (.txt .md .html .pdf .docx)")
    generator: str = Field(
        ...,
        description="the model that writes the pairs: catalog name, folder, or an endpoint openai:MODEL@BASE_URL",
    )
    pairs_per_chunk: int = Field(3, ge=1, le=20, description="question-answer pairs asked for per chunk")
    paraphrases: int = Field(
        3, ge=0, le=10, description="rewordings of each question (more: answers new phrasings better)"
    )
    eval_paraphrases: int = Field(
        1, ge=0, le=5, description="paraphrases per pair held out of training, for evaluation"
    )
    lang: Literal["auto", "en", "zh"] = Field("auto", description="prompt language (auto: per chunk)")
    output: str | None = Field(None, description="training file (default synth.jsonl); the others beside it")
    chunk_tokens: int = Field(300, ge=32, le=8192, description="chunk size in tokens, headings included")
    tokenizer: str | None = Field(
        None,
        description="model whose tokenizer measures chunks (default: a local generator's, else the embedded)",
    )
    chunk_overlap: int = Field(40, ge=0, description="tokens shared by neighbouring chunks")
    grounding: Literal["overlap", "judge", "off"] = Field(
        "overlap",
        description="how answers are checked against their chunk: word overlap, the generator as judge, or not",
    )
    min_overlap: float = Field(
        0.6, ge=0, le=1, description="overlap: share of the answer's content words that must be in the chunk"
    )
    near_duplicate: float = Field(
        0.8, gt=0, le=1, description="questions this alike (character 5-gram Jaccard) count as duplicates"
    )
    min_question_chars: int = Field(4, ge=1, description="shorter questions are dropped")
    max_question_chars: int = Field(300, ge=8, description="longer questions are dropped")
    max_answer_chars: int = Field(500, ge=1, description="longer answers are dropped")
    concurrency: int = Field(
        4, ge=1, le=64, description="requests in flight to an endpoint / prompts per batch on a local model"
    )
    retries: int = Field(2, ge=0, le=10, description="new tries for a failed request or an unreadable reply")
    temperature: float = Field(0.3, ge=0, le=2, description="generator temperature (retries: at least 0.7)")
    max_new_tokens: int = Field(512, ge=16, le=8192, description="longest generator reply in tokens")
    seed: int = Field(0, description="seed of sampling")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="environment variable holding the key of an `openai:` generator"
    )
    trust_remote_code: bool = Field(False, description="run code shipped with a local generator")

    @model_validator(mode="after")
    def _check(self) -> SynthSpec:
        if self.chunk_overlap >= self.chunk_tokens // 2:
            raise ValueError(
                f"chunk_overlap {self.chunk_overlap}: less than half of chunk_tokens ({self.chunk_tokens})"
            )
        if self.eval_paraphrases > self.paraphrases:
            raise ValueError(
                f"eval_paraphrases {self.eval_paraphrases}: at most paraphrases ({self.paraphrases})"
            )
        return self


class TuneSpec(_Spec):
    """What `lmtailor tune` runs: trials of `lmtailor train` on one split, searched by Optuna (docs/tuning.md)."""

    model: str = Field(
        "smollm2-135m-instruct", description="catalog name, model folder, tuned model or .gguf file"
    )
    data: str = Field(
        ..., description="training file (chat, alpaca or sharegpt; JSONL, JSON, CSV or Parquet)"
    )
    val_data: str | None = Field(
        None,
        description="validation file; else `val_ratio` of the training rows, held out by phrasing or label",
    )
    val_ratio: float = Field(0.2, gt=0, lt=1, description="fraction of training rows held out for validation")
    format: Literal["auto", "chat", "alpaca", "sharegpt"] = Field("auto", description="data format")
    on_error: Literal["fail", "skip"] = Field(
        "fail", description="bad rows stop the run, or are skipped and counted"
    )
    output: str = Field(..., description="the search's folder: its study, trials, report and the best model")
    metric: str | None = Field(
        None, description="what the search maximises on validation (default: f1 for labels, else contains)"
    )
    budget: float | None = Field(
        None,
        gt=0,
        description="wall-clock seconds for the search (given as 15m, 90s, 1h30m or seconds; default 15m "
        "unless `trials` is given)",
    )
    trials: int | None = Field(
        None, ge=1, description="at most this many trials (the default rule is the first)"
    )
    strategies: list[Literal["lora", "mlp", "full"]] = Field(
        ["lora", "mlp", "full"], min_length=1, description="strategies the search may pick"
    )
    retention: bool = Field(True, description="measure each trial's retention, and hold trials to a floor")
    retention_floor: float | None = Field(
        None,
        ge=0,
        le=1,
        description="a trial keeping less of the base than this does not win (default: the default rule's "
        "retention minus 0.05)",
    )
    seed: int = Field(42, description="seed of the split, the sampler and every trial")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="compute precision")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (off: safer)")

    @field_validator("budget", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        if value is not None and (value == "perplexity" or value not in METRIC_NAMES):
            known = ", ".join(n for n in METRIC_NAMES if n != "perplexity")
            raise ValueError(f"unknown metric {value!r}; a search maximises one of {known}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TuneSpec:
        if self.budget is None and self.trials is None:
            self.__dict__["budget"] = 900.0  # 15 minutes (set in __dict__: validate_assignment would recurse)
        return self


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in "15m", "90s", "1h30m", "2.5h" or a plain number of seconds; an error names the value."""
    value = text.strip().lower()
    try:
        return float(value)
    except ValueError:
        pass
    match = DURATION.fullmatch(value)
    if not value or not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration: give 15m, 90s, 1h30m or seconds")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def load_spec(cls: type[_Spec], file: str | Path | None, overrides: dict[str, Any]) -> Any:
    """A spec from a YAML file with flags on top (flags that are None are left out)."""
    import yaml

    data: dict[str, Any] = {}
    if file:
        path = Path(file)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SpecError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a spec is a mapping of keys to values")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_spec(cls, data, where=str(file) if file else "spec")


def build_spec(cls: type[_Spec], data: dict[str, Any], where: str = "spec") -> Any:
    try:
        return cls(**data)
    except ValidationError as e:
        raise SpecError(_explain(cls, e, where)) from None


def _explain(cls: type[_Spec], e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "spec"
        if err["type"] == "extra_forbidden":
            valid = ", ".join(cls.model_fields)
            lines.append(f"{where}: unknown key {key!r}; valid keys: {valid}")
        elif not err["loc"]:  # a rule across keys (the validators below): its own words, no field name
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}: {key}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
