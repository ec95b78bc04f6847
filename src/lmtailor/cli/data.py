"""`lmtailor data …`: inspect, validate, clean and split data files. Imports no torch at module level."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from lmtailor.cli.support import user_errors
from lmtailor.data.ops import CLEAN_ON_ERROR, SPLIT_ON_ERROR
from lmtailor.errors import DataError, LmtailorError
from lmtailor.models.loading import use_given_threads
from lmtailor.terminal import err, out

data_app = typer.Typer(
    help="Inspect, validate, clean and split training data (JSONL, JSON, CSV or Parquet).",
    no_args_is_help=True,
)

FileArg = Annotated[Path, typer.Argument(help="Data file: .jsonl, .json, .csv or .parquet.", metavar="FILE")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="Row format: auto, chat, alpaca or sharegpt.")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="Model (name or folder) whose tokenizer counts tokens.")
]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="lmtailor home (default: $LMTAILOR_HOME or ~/.lmtailor).")
]
OnErrorOpt = Annotated[
    str, typer.Option("--on-error", help="Bad rows: 'fail' stops, 'skip' drops and lists them.")
]
MAX_SHOWN = 20


def _tokenizer(model: str | None, home: Path | None) -> Any:
    if model is None:
        return None
    from lmtailor.models.loading import load_tokenizer  # loads transformers: only when asked for

    return load_tokenizer(model, home)


@data_app.command("inspect")
def inspect_cmd(file: FileArg, fmt: FormatOpt = "auto", model: ModelOpt = None, home: HomeOpt = None) -> None:
    """Show what a data file holds: rows per format, roles, turns, extra keys, token lengths, bad rows.

    Example: lmtailor data inspect train.jsonl --model smollm2-135m-instruct
    """
    from lmtailor.data.ops import inspect_file

    with user_errors():
        seen = inspect_file(file, fmt, _tokenizer(model, home))
    _print_summary(file, seen.summary, len(seen.loaded.errors))
    _print_errors(seen.loaded.errors, "bad rows")


@data_app.command("validate")
def validate_cmd(
    file: FileArg,
    fmt: FormatOpt = "auto",
    model: ModelOpt = None,
    max_length: Annotated[
        int | None,
        typer.Option("--max-length", help="Flag rows longer than this many tokens (needs --model)."),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Check every row and list each bad one as file:line: reason; exit code 1 when any is bad.

    Example: lmtailor data validate train.jsonl --model smollm2-135m-instruct --max-length 2048
    """
    from lmtailor.data.summary import summarize
    from lmtailor.data.validate import validate_file

    with user_errors():
        if max_length is not None and model is None:
            raise LmtailorError("--max-length needs --model (its tokenizer counts the tokens)")
        tokenizer = _tokenizer(model, home)
        result = validate_file(file, fmt, tokenizer, max_length)
        tokens = summarize(result.records, tokenizer)["tokens"] if tokenizer is not None else None
    console = out()
    for e in result.errors:
        console.print(escape(str(e)))
    if tokens:
        console.print(
            f"tokens: p50 {tokens['p50']}, p90 {tokens['p90']}, p99 {tokens['p99']}, max {tokens['max']}"
        )
    total = len(result.records) + len(result.errors)
    if result.errors:
        err().print(f"[red]{len(result.errors)} of {total} rows bad[/red]")
        raise typer.Exit(1)
    console.print(f"[green]ok: {total} rows ({_counts(result.formats)})[/green]")


@data_app.command("clean")
def clean_cmd(
    file: FileArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the cleaned chat JSONL.")],
    fmt: FormatOpt = "auto",
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact and near duplicates.")] = True,
    near_dup_threshold: Annotated[
        float,
        typer.Option("--near-dup-threshold", help="Jaccard similarity (0-1] above which rows are near dups."),
    ] = 0.9,
    max_tokens: Annotated[
        int | None,
        typer.Option("--max-tokens", help="Drop rows longer than this many tokens (needs --model)."),
    ] = None,
    model: ModelOpt = None,
    mask_pii: Annotated[
        bool,
        typer.Option("--mask-pii", help="Replace e-mail addresses and phone numbers with <EMAIL>/<PHONE>."),
    ] = False,
    on_error: OnErrorOpt = CLEAN_ON_ERROR,
    home: HomeOpt = None,
) -> None:
    """Clean a data file into chat JSONL: trim, drop empty, duplicate, near-duplicate and over-long rows.

    Example: lmtailor data clean raw.jsonl --output clean.jsonl --mask-pii
    """
    from lmtailor.data.ops import clean_file
    from lmtailor.data.summary import write_jsonl

    with user_errors():
        if max_tokens is not None and model is None:
            raise LmtailorError("--max-tokens needs --model (its tokenizer counts the tokens)")
        cleaned = clean_file(file, fmt, on_error, tokenizer=_tokenizer(model, home), dedup=dedup,  # type: ignore[arg-type]
                             near_dup_threshold=near_dup_threshold, max_tokens=max_tokens, mask_pii=mask_pii)  # fmt: skip
        write_jsonl(cleaned.kept, output)
    _print_errors(cleaned.loaded.errors, "skipped invalid rows")
    _print_report(cleaned.report, output)


@data_app.command("split")
def split_cmd(
    file: FileArg,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Folder for train/val/test.jsonl.")],
    ratios: Annotated[
        str, typer.Option("--ratios", help="train,val[,test] fractions summing to 1.")
    ] = "0.8,0.1,0.1",
    seed: Annotated[
        int, typer.Option("--seed", help="Shuffle seed; the same seed gives the same split.")
    ] = 0,
    fmt: FormatOpt = "auto",
    on_error: OnErrorOpt = SPLIT_ON_ERROR,
    home: HomeOpt = None,
) -> None:
    """Split a data file into train.jsonl, val.jsonl and test.jsonl (chat JSONL) in a folder.

    Example: lmtailor data split clean.jsonl --output-dir splits --ratios 0.8,0.1,0.1 --seed 0
    """
    from lmtailor.data.ops import split_file
    from lmtailor.data.summary import write_jsonl

    with user_errors():
        loaded, parts = split_file(file, _parse_ratios(ratios), seed, fmt, on_error)  # type: ignore[arg-type]
        table = Table("split", "rows", "file")
        for name, rows in parts.items():
            path = output_dir / f"{name}.jsonl"
            write_jsonl(rows, path)
            table.add_row(name, str(len(rows)), str(path))
    _print_errors(loaded.errors, "skipped invalid rows")
    out().print(table)


@data_app.command("synth")
def synth_cmd(
    spec_file: Annotated[
        Path | None, typer.Argument(help="YAML spec file; flags override its keys", metavar="SPEC")
    ] = None,
    docs: Annotated[
        list[str] | None,
        typer.Option("--docs", help="Document or folder (.txt .md .html .pdf .docx); repeat for more."),
    ] = None,
    generator: Annotated[
        str | None,
        typer.Option(help="Model that writes the pairs: catalog name, folder, or openai:MODEL@BASE_URL."),
    ] = None,
    pairs_per_chunk: Annotated[int | None, typer.Option(help="Question-answer pairs per chunk.")] = None,
    paraphrases: Annotated[int | None, typer.Option(help="Rewordings of each question.")] = None,
    lang: Annotated[str | None, typer.Option(help="Prompt language: auto, en or zh.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Training file (default synth.jsonl).")
    ] = None,
    grounding: Annotated[str | None, typer.Option(help="Answer check: overlap, judge or off.")] = None,
    chunk_tokens: Annotated[int | None, typer.Option(help="Chunk size in tokens.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight / prompts per batch.")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Model whose tokenizer measures chunks (default: the generator's).")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Turn documents into a training set: question-answer pairs per chunk, paraphrases, filters, an eval split.

    Writes FILE, FILE.eval.jsonl (held-out paraphrases), FILE.report.json and FILE.dropped.jsonl; run it
    again to continue after an interruption. Example:
    lmtailor data synth --docs manuals/ --generator openai:qwen2.5-7b@http://127.0.0.1:8000/v1 -o qa.jsonl
    """

    from lmtailor.specs import SynthSpec, load_spec

    with user_errors():
        spec = load_spec(SynthSpec, spec_file, {"docs": docs or None, "generator": generator,
                                                "pairs_per_chunk": pairs_per_chunk, "paraphrases": paraphrases,
                                                "lang": lang, "output": output, "grounding": grounding,
                                                "chunk_tokens": chunk_tokens, "concurrency": concurrency,
                                                "tokenizer": tokenizer})  # fmt: skip
        if spec.output is None:
            spec.output = "synth.jsonl"
        from lmtailor.synth import run_synth

        use_given_threads()

        console = out()
        report = run_synth(spec, home=home, log=lambda line: console.print(escape(line)))
    _print_synth(report)


def _print_synth(report: dict[str, Any]) -> None:
    table = Table(
        "",
        "",
        title=f"synthesized from {len(report['documents'])} documents by {escape(report['generator'])}",
    )
    table.add_row("chunks", f"{report['chunks']} ({report['chunks_without_pairs']} gave no pair)")
    table.add_row("replies that could not be read", str(report["unparsable_replies"]))
    table.add_row("replies with no grounded answer", str(report["replies_without_grounded_answer"]))
    table.add_row("pairs kept / generated", f"{report['pairs_kept']} / {report['pairs_generated']}")
    table.add_row(
        "paraphrases kept / generated", f"{report['paraphrases_kept']} / {report['paraphrases_generated']}"
    )
    for reason, n in report["dropped"].items():
        table.add_row(f"  dropped: {reason.replace('_', ' ')}", str(n))
    table.add_row("training rows", f"{report['train_rows']} → {escape(report['files']['train'])}")
    table.add_row("eval rows", f"{report['eval_rows']} → {escape(report['files']['eval'])}")
    table.add_row("report", escape(report["files"]["report"]))
    table.add_row("seconds", str(report["seconds"]))
    out().print(table)


def _parse_ratios(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise LmtailorError(
            f"--ratios must be comma-separated numbers like 0.8,0.1,0.1, got '{text}'"
        ) from None


# ---------------------------------------------------------------- output


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def _print_summary(file: Path, summary: dict[str, Any], bad: int) -> None:
    table = Table("", escape(str(file)))
    turns = summary["messages_per_row"]
    table.add_row("rows", str(summary["rows"]))
    table.add_row("bad rows", str(bad))
    table.add_row("formats", _counts(summary["formats"]))
    table.add_row("roles", _counts(summary["roles"]))
    table.add_row("messages per row", f"min {turns['min']}, mean {turns['mean']}, max {turns['max']}")
    table.add_row("with system prompt", str(summary["with_system"]))
    table.add_row("extra keys", _counts(summary["extra_keys"]))
    if "tokens" in summary:
        t = summary["tokens"]
        table.add_row("tokens", f"p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}, max {t['max']}")
    out().print(table)


def _print_errors(errors: list[DataError], title: str) -> None:
    if not errors:
        return
    table = Table("line", "reason", title=f"{len(errors)} {title}")
    for e in errors[:MAX_SHOWN]:
        table.add_row(str(e.line or "-"), escape(e.reason))
    if len(errors) > MAX_SHOWN:
        table.add_row("…", f"and {len(errors) - MAX_SHOWN} more")
    err().print(table)


def _print_report(report: dict[str, int], output: Path) -> None:
    table = Table("", "rows", title=f"cleaned → {output}")
    for key, value in report.items():
        table.add_row(key.replace("_", " "), str(value))
    out().print(table)
