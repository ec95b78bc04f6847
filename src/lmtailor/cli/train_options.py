"""The options of `lmtailor train` whose declarations are longer than a line: their help is the CLI's reference
(docs/cli.md is generated from it), kept here so the command reads as a list of its options."""

from __future__ import annotations

from pathlib import Path  # noqa: F401 (annotations below name it)
from typing import Annotated

import typer

Model = Annotated[str | None, typer.Option(help="catalog name, model folder, tuned model or .gguf")]

Data = Annotated[
    list[str] | None,
    typer.Option(
        help="training data file; several mix into one run: --data a.jsonl --data b.jsonl:0.3 "
        "(FILE[:WEIGHT], WEIGHT the file's share of the mix; none: all rows)"
    ),
]

ValRatio = Annotated[float | None, typer.Option(help="fraction of training rows held out for validation")]

Method = Annotated[
    str | None,
    typer.Option(help="sft | dpo (preference rows) | reinforcement (prompt rows; its grader in a YAML spec)"),
]

Beta = Annotated[float | None, typer.Option(help="dpo: how far from the reference model (higher: less)")]

LearningRate = Annotated[float | None, typer.Option("--lr", "--learning-rate", help="peak learning rate")]

Scheduler = Annotated[str | None, typer.Option(help="cosine | linear | constant | constant_with_warmup")]

Packing = Annotated[bool | None, typer.Option("--packing/--no-packing", help="pack samples (kept apart)")]

Recite = Annotated[
    bool | None,
    typer.Option(
        "--recite/--no-recite", help='also train each answer as the reply to "Tell me a fact." (auto)'
    ),
]

ReplayRatio = Annotated[
    float | None,
    typer.Option(
        help="share of rows that are the base's own answers to general prompts, to keep what it knew "
        "(auto: 0.2; 0: off)"
    ),
]

Retention = Annotated[
    bool | None,
    typer.Option(
        "--retention/--no-retention", help="measure at the end what the base knew and kept (~1 min)"
    ),
]

EarlyStoppingPatience = Annotated[int | None, typer.Option(help="stop after N validations without gain")]

EvalMetrics = Annotated[
    list[str] | None, typer.Option(help="score generations on the validation rows at each evaluation")
]

BestMetric = Annotated[str | None, typer.Option(help="what --keep-best watches (default eval_loss)")]

KeepBest = Annotated[
    bool | None, typer.Option("--keep-best/--no-keep-best", help="end on the best checkpoint")
]

Resume = Annotated[
    bool | None,
    typer.Option("--resume", help="continue from the last checkpoint in --output (same data, batching)"),
]

TrustRemoteCode = Annotated[bool | None, typer.Option("--trust-remote-code", help="run the model's own code")]

GradientCheckpointing = Annotated[
    bool | None,
    typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="less memory, ~30% slower"),
]

Devices = Annotated[int | None, typer.Option(help="processes (GPUs) on this node; >1 launches torchrun")]

Distributed = Annotated[str | None, typer.Option(help="ddp | fsdp | deepspeed-zero2 | deepspeed-zero3")]

Offload = Annotated[
    bool | None, typer.Option("--offload", help="deepspeed-zero3: parameters and optimizer in CPU memory")
]

AccelerateConfig = Annotated[str | None, typer.Option(help="launch with this accelerate config file instead")]

DryRun = Annotated[
    bool, typer.Option("--dry-run", help="print the plan and the memory it needs, train nothing")
]
