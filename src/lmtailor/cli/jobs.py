"""`lmtailor jobs list | show | logs | cancel | pause | resume`: the jobs of a running `lmtailor serve`."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lmtailor.terminal import out, print_error, print_table

jobs_app = typer.Typer(
    help="Fine-tuning and evaluation jobs of a running `lmtailor serve`.", no_args_is_help=True
)
console = out()

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="LMTAILOR_URL", help="the server's API (default http://127.0.0.1:8000/v1)"),
]
KeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="LMTAILOR_API_KEY", help="the server's API key")
]
JobArg = Annotated[str, typer.Argument(help="job id (ftjob-…)")]
DEFAULT_URL = "http://127.0.0.1:8000/v1"


def _client(url: str, key: str | None):
    import openai

    return openai.OpenAI(base_url=url, api_key=key or "none", max_retries=1)


def _call(url: str, fn):
    """One request; the server's error (or its absence) as one red line and exit code 1."""
    import openai

    try:
        return fn()
    except openai.APIConnectionError:
        _fail(f"no lmtailor server at {url}: start one with `lmtailor serve` or pass --url")
    except openai.APIStatusError as e:
        _fail(f"{e.status_code}: {e.message}")


def _fail(message: str):
    print_error(message)
    raise typer.Exit(1)


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "–"


@jobs_app.command("list")
def list_jobs(limit: int = 20, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """The newest jobs, fine-tuning and evaluation: id, kind, status, model, fine-tuned model, created.

    Example: lmtailor jobs list
    """
    client = _client(url, api_key)
    page = _call(
        url, lambda: client.get("/lmtailor/jobs", cast_to=object, options={"params": {"limit": limit}})
    )
    table = Table("id", "kind", "status", "model", "fine-tuned model", "created", box=None)  # a line a job
    for job in page["data"]:
        table.add_row(job["id"], job["lmtailor"]["kind"], job["status"], job["model"],
                      job["fine_tuned_model"] or "–", _when(job["created_at"]))  # fmt: skip
    print_table(table)


@jobs_app.command("show")
def show(job_id: JobArg, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Everything about one job, its checkpoints included.

    Example: lmtailor jobs show ftjob-0123
    """
    client = _client(url, api_key)
    job = _call(url, lambda: client.fine_tuning.jobs.retrieve(job_id))
    table = Table("field", "value", show_header=False)
    for key in ("id", "status", "model", "fine_tuned_model", "training_file", "validation_file", "trained_tokens",
                "hyperparameters", "seed", "user_provided_suffix", "metadata", "result_files", "error"):  # fmt: skip
        value = getattr(job, key, None)
        table.add_row(key, str(value.model_dump() if hasattr(value, "model_dump") else value))
    table.add_row("created / finished", f"{_when(job.created_at)} / {_when(job.finished_at)}")
    for c in _call(url, lambda: client.fine_tuning.jobs.checkpoints.list(job_id)).data:
        table.add_row(f"checkpoint step {c.step_number}", c.fine_tuned_model_checkpoint)
    print_table(table)


@jobs_app.command("logs")
def logs(job_id: JobArg, follow: Annotated[bool, typer.Option("--follow", "-f", help="wait for new events")] = False,
         url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:  # fmt: skip
    """A job's events, oldest first; --follow until it finishes.

    Example: lmtailor jobs logs ftjob-0123 -f
    """
    client = _client(url, api_key)
    seen: set[str] = set()

    def show_new() -> None:
        new = []
        for e in _call(
            url, lambda: client.fine_tuning.jobs.list_events(job_id, limit=100)
        ):  # newest first, all pages
            if e.id in seen:
                break
            new.append(e)
        for e in reversed(new):
            seen.add(e.id)
            style = "red" if e.level == "error" else ("dim" if e.type == "metrics" else "")
            line = f"{_when(e.created_at)}  {escape(e.message)}"
            console.print(f"[{style}]{line}[/{style}]" if style else line)

    while True:
        # the status before the events: a job that ended has written its last events a moment after its status
        job = _call(url, lambda: client.fine_tuning.jobs.retrieve(job_id)) if follow else None
        show_new()
        if not follow:
            return
        if job.status in ("succeeded", "failed", "cancelled", "paused"):
            time.sleep(1)
            show_new()
            return
        time.sleep(2)


def _action(name: str):
    def command(job_id: JobArg, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
        jobs = _client(url, api_key).fine_tuning.jobs
        job = _call(url, lambda: getattr(jobs, name)(job_id))
        console.print(f"{job.id}: {job.status}")

    command.__doc__ = f"{name.capitalize()} a job.\n\n    Example: lmtailor jobs {name} ftjob-0123\n    "
    return command


for _name in ("cancel", "pause", "resume"):
    jobs_app.command(_name)(_action(_name))
