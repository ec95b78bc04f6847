"""`lmtailor tune`: flags and YAML → a TuneSpec → tune/search.py. Imports no torch at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmtailor.cli.support import user_errors
from lmtailor.models.loading import use_given_threads
from lmtailor.terminal import out

console = out()


def tune_command(
    spec: Annotated[Path | None, typer.Argument(help="YAML spec file; flags override its keys")] = None,
    model: Annotated[
        str | None, typer.Option(help="catalog name, model folder, tuned model or .gguf")
    ] = None,
    data: Annotated[str | None, typer.Option(help="training data file")] = None,
    val_data: Annotated[str | None, typer.Option(help="validation data file")] = None,
    val_ratio: Annotated[
        float | None,
        typer.Option(help="fraction held out for validation, by phrasing or label (default 0.2)"),
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="what the search maximises (default: f1 for labels, else contains)")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="wall-clock time: 15m, 90s, 1h30m (default 15m)")] = None,
    trials: Annotated[
        int | None, typer.Option(help="at most this many trials (trial 0: the default rule)")
    ] = None,
    strategies: Annotated[
        list[str] | None,
        typer.Option("--strategy", help="a strategy the search may pick: lora | mlp | full; repeat"),
    ] = None,
    retention: Annotated[
        bool | None,
        typer.Option(
            "--retention/--no-retention", help="measure each trial's retention and hold it to a floor"
        ),
    ] = None,
    retention_floor: Annotated[
        float | None, typer.Option(help="least retention a winner keeps (default: the default rule's - 0.05)")
    ] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="the search's folder")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the split, the sampler and every trial")] = None,
    precision: Annotated[str | None, typer.Option(help="auto | bf16 | fp16 | fp32")] = None,
    home: Annotated[
        Path | None, typer.Option("--home", help="lmtailor home (default: $LMTAILOR_HOME or ~/.lmtailor)")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error")] = False,
) -> None:
    """Search strategy and hyperparameters on your own validation data (Optuna), starting from the default rule,
    and keep the best model; run it again with the same --output to continue a stopped search (docs/tuning.md).

    Example: lmtailor tune --data train.jsonl --budget 15m -o my-search
    """
    from lmtailor.specs import TuneSpec, load_spec

    flags = {"model": model, "data": data, "val_data": val_data, "val_ratio": val_ratio, "metric": metric,
             "budget": budget, "trials": trials, "strategies": strategies or None, "retention": retention,
             "retention_floor": retention_floor, "output": output, "seed": seed, "precision": precision}  # fmt: skip
    with user_errors(debug):
        tune_spec = load_spec(TuneSpec, spec, flags)
        use_given_threads()
        from lmtailor.tune.search import run_tune

        record = run_tune(tune_spec, home=home, log=console.print)
    folder = Path(tune_spec.output)
    console.print(f"[green]best model:[/green] {folder / 'model'}  (trial {record['best']['number']})")
    console.print(f"report: {folder / 'report.html'}")
    console.print(f"chat with it:  lmtailor chat {folder / 'model'}")
