"""Runs started outside the server (`lmtailor train`, `lmtailor eval`, the quickstart), written into the home's
store after they end, so the console shows them beside the API's jobs: a training run's curve, card and
retention; an evaluation's table, chart and answers on the Evaluate page.

A recorded run is a job row that is already over (succeeded), with its events: the worker never picks it up,
and nothing of the run depends on it. A training run is kind `train` (not `fine_tune`: it has no uploaded
training file, so OpenAI's /v1/fine_tuning/jobs does not list it; /v1/lmtailor/jobs does); its model stays
where the run wrote it, named in the job's options (`folder`). An evaluation is kind `eval`, its outputs copied
into the job's folder as an eval job's are, so the console reads both the same way.
"""

from __future__ import annotations

import calendar
import json
import shutil
import time
from pathlib import Path

from lmtailor.home import home_dir
from lmtailor.platform.runjob import eval_summary, step_event
from lmtailor.platform.store import Event, Job, Store, new_id, now

EVAL_OUTPUTS = ("metrics.json", "predictions.jsonl", "report.md", "report.html")


def record_training(out: Path, home=None, door: str = "cli") -> str:
    """The training run whose tuned model is `out` (its lmtailor.json and metrics.jsonl), as a finished job
    with one metrics event per logged step; returns the job's id."""
    from lmtailor.train.callbacks import read_metrics

    out = Path(out).resolve()
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    metrics = card.get("metrics") or {}
    hyper = card.get("hyperparameters") or {}
    finished = _card_time(card) or now()
    started = finished - int(metrics.get("runtime_s") or 0)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "step" in r]
    total = max((r["step"] for r in rows), default=0)
    job = Job(id=new_id("run"), kind="train", status="succeeded", model=card.get("base_model") or "?",
              base_ref=card.get("base_path"), method={"type": card.get("method") or "sft"},
              hyperparameters={k: hyper.get(k) for k in ("learning_rate", "epochs", "batch_size") if k in hyper},
              options={"door": door, "folder": str(out)}, seed=int(hyper.get("seed") or 0), created_at=started,
              started_at=started, finished_at=finished, fine_tuned_model=_served_name(out, home),
              trained_tokens=int(metrics.get("trained_tokens") or 0), result_files=[],
              chosen={k: hyper.get(k) for k in ("epochs", "batch_size", "learning_rate", "strategy", "recite")})  # fmt: skip
    events = [_at(started, f"Training run started from the {door}: {card.get('base_model')} on "
                           f"{_data_line(card)}")]  # fmt: skip
    for row in rows:  # the events a job's callback writes for the same logs
        said = step_event(row, row["step"], total)
        if said:
            events.append(_at(started + int(row.get("elapsed_s") or 0), *said))
    kept = metrics.get("retention")
    if kept:
        from lmtailor.evaluate.retention import summary_line

        events.append(_at(finished, f"What tuning cost: {summary_line(kept)}", {"retention": kept}))
    events.append(_at(finished, f"Tuned model written: {out}"))
    events.append(_at(finished, "The run has successfully completed"))
    return Store(home).add_job(job, events).id


def record_eval(result: dict, home=None, door: str = "cli") -> str:
    """The evaluation whose run_eval result is `result`, as a finished eval job; its outputs copied to the job's
    folder (the run's own folder may be anywhere, and may go)."""
    store = Store(home)
    job_id = new_id("evaljob")
    target = home_dir(home) / "jobs" / job_id / "eval"
    target.mkdir(parents=True, exist_ok=True)
    source = Path(result["output"])
    for name in EVAL_OUTPUTS:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    names = [m["name"] for m in result.get("models", [])]
    job = Job(id=job_id, kind="eval", status="succeeded", model=", ".join(names), created_at=now(),
              started_at=now(), finished_at=now(), result_files=[], output=store.rel(target.parent),
              options={"door": door, "folder": str(source), "models": names,
                       "data": (result.get("data") or {}).get("path")})  # fmt: skip
    events = [_at(now(), f"Evaluation run from the {door}: {', '.join(names)}; outputs in {source}"),
              _at(now(), "Evaluation finished", eval_summary(result))]  # fmt: skip
    return store.add_job(job, events).id


def record_quietly(fn, *args, log=print, **kwargs) -> str | None:
    """A record written, or a line saying why not: the run itself succeeded, and stays so."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # a locked or unreadable store must not turn a finished run into an error
        log(f"(not recorded in the home's job list: {type(e).__name__}: {e})")
        return None


def _at(when: int, message: str, data: dict | None = None) -> Event:
    return Event(id=new_id("ftevent"), created_at=int(when), level="info",
                 type="metrics" if data and "step" in data else "message", message=message, data=data)  # fmt: skip


def _card_time(card: dict) -> int | None:
    try:
        return calendar.timegm(time.strptime(card["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
    except (KeyError, TypeError, ValueError):
        return None


def _data_line(card: dict) -> str:
    data = card.get("data") or {}
    if data.get("sources"):
        return ", ".join(str(s.get("name") or s.get("path")) for s in data["sources"])
    train = data.get("train") or {}
    return f"{Path(str(train.get('path') or '?')).name} ({train.get('rows', '?')} rows)"


def _served_name(out: Path, home) -> str:
    """The name the server offers the model by: its folder's name in the home's models, else its path."""
    models = (home_dir(home) / "models").resolve()
    return out.name if out.parent == models else str(out)
