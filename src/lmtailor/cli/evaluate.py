"""`lmtailor eval`: flags and YAML -> EvalSpec -> run_eval -> a table of models x metrics. No torch at import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lmtailor.cli.support import user_errors
from lmtailor.models.loading import use_given_threads


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _text_or_file(flag: str, value: str | None) -> str | None:
    """A flag's text, or the content of the file it names as @path."""
    if not value or not value.startswith("@"):
        return value
    from lmtailor.errors import SpecError

    path = Path(value[1:]).expanduser()
    if not path.is_file():
        raise SpecError(f"{flag}: file not found: {path}")
    return path.read_text(encoding="utf-8")


def eval_command(
    spec: Annotated[Path | None, typer.Argument(help="YAML spec file; flags override its keys")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="catalog name, folder, tuned model or openai:MODEL@URL; repeat; first = baseline",
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="test file: prompts with a reference")] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            help="comma-separated metric names; judge needs --judge-model (default: picked from the references)"
        ),
    ] = None,
    labels: Annotated[str | None, typer.Option(help="comma-separated classification labels")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="output folder")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="longest answer in tokens")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 answers greedily")] = None,
    top_p: Annotated[float | None, typer.Option(help="nucleus sampling when temperature > 0")] = None,
    batch_size: Annotated[int | None, typer.Option(help="prompts generated together")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="auto | chat | alpaca | sharegpt")] = None,
    on_error: Annotated[str | None, typer.Option(help="bad rows: fail | skip")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of sampling and bootstrap")] = None,
    bootstrap: Annotated[int | None, typer.Option(help="bootstrap resamples")] = None,
    cache: Annotated[
        bool | None,
        typer.Option("--cache/--no-cache", help="reuse cached answers (same model, prompt, params)"),
    ] = None,
    retention: Annotated[
        bool | None,
        typer.Option(
            "--retention/--no-retention",
            help="also measure, for each tuned model, the general probes its base answered that it still answers",
        ),
    ] = None,
    judge_model: Annotated[
        str | None,
        typer.Option(help="model that scores answers for metric judge: openai:MODEL@URL or a local model"),
    ] = None,
    judge_rubric: Annotated[
        str | None,
        typer.Option(
            help="rubric of the judge's 1-5 score, as text or @file (default: correct and complete)"
        ),
    ] = None,
    home: Annotated[
        Path | None, typer.Option("--home", help="lmtailor home (default: $LMTAILOR_HOME or ~/.lmtailor)")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error")] = False,
) -> None:
    """Evaluate and compare models on a test set: metrics with 95% intervals, tests against the first model.

    Example: lmtailor eval --model smollm2-135m-instruct --model my-model --data test.jsonl

    Judged: lmtailor eval -m my-model --data test.jsonl --metrics judge,rouge_l --judge-model openai:gpt-4o-mini
    """

    flags = {
        "models": model or None, "data": data, "metrics": _split(metrics), "labels": _split(labels),
        "output": output, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
        "batch_size": batch_size, "format": fmt, "on_error": on_error, "seed": seed, "bootstrap": bootstrap,
        "cache": cache, "retention": retention, "judge_model": judge_model,
    }  # fmt: skip
    console = Console(highlight=False)
    with user_errors(debug):
        from lmtailor.evaluate.spec import EvalSpec
        from lmtailor.specs import load_spec

        flags["judge_rubric"] = _text_or_file("--judge-rubric", judge_rubric)
        eval_spec = load_spec(EvalSpec, spec, flags)
        use_given_threads()
        from lmtailor.evaluate.runner import run_eval

        result = run_eval(eval_spec, home=home, log=lambda s: console.print(f"[dim]{s}[/dim]"))
    from lmtailor.platform.record import record_eval, record_quietly

    record_quietly(
        record_eval, result, home, door="cli", log=console.print
    )  # the console's Evaluate page lists it
    console.print(scores_table(result))
    out = Path(result["output"])
    console.print(
        f"[green]report:[/green] {out / 'report.html'}  ({out / 'report.md'}, {out / 'metrics.json'})"
    )


def scores_table(result: dict[str, Any]) -> Table:
    """Models x metrics, each cell 'value [low, high]' with ▲ / ▼ where it differs from the baseline."""
    from lmtailor.evaluate.report import fmt

    kept = any(m.get("retention") for m in result["models"])
    table = Table(
        "model",
        *result["metrics"],
        *(["retention (vs its base)"] if kept else []),
        title="95% bootstrap intervals; ▲ / ▼ vs the first model (p < 0.05)",
    )
    for m in result["models"]:
        cells = []
        for n in result["metrics"]:
            s, c = m["scores"].get(n), m["vs_baseline"].get(n)
            if s is None:
                cells.append("–")
                continue
            mark = " [green]▲[/green]" if c and c["better"] else " [red]▼[/red]" if c and c["worse"] else ""
            cells.append(
                f"{fmt(n, s['value'])} [dim]\\[{fmt(n, s['ci_low'])}, {fmt(n, s['ci_high'])}][/dim]{mark}"
            )
        if kept:
            r = m.get("retention")
            cells.append(
                f"{r['value']:.0%} [dim]\\[{r['ci_low']:.0%}, {r['ci_high']:.0%}][/dim]"
                if r and r.get("eligible")
                else "–"
            )
        name = m["name"] + (" (baseline)" if m["name"] == result["baseline"] else "")
        table.add_row(name, *cells)
    return table
