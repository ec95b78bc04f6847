"""One job in its own process: `python -m lmtailor.platform.runjob JOB_ID --home H --db URL`.

The worker starts it; it validates the files, trains (or evaluates), streams events, metrics and
checkpoints into the store, and writes the job's final status itself. A pause request is honoured at
the next step: a checkpoint is saved and the process exits with the job `paused`. Cancellation is the
worker's SIGTERM; a crash is the worker's to notice. Training always resumes from the job's last
checkpoint when there is one, so a job restarted after a crash continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from lmtailor.errors import DataError, LmtailorError, SpecError
from lmtailor.home import atomic_write_text
from lmtailor.platform.store import ACTIVE, Checkpoint, File, Job, Model, Store, new_id, now
from lmtailor.train.launch import Paused, die_with_parent


def fine_tuned_name(job: Job) -> str:
    base = Path(job.model).name if "/" in job.model else job.model
    return f"ft:{base}:{job.suffix or 'lmtailor'}:{job.id}"


def job_dir(store: Store, job: Job) -> Path:
    return store.home / "jobs" / job.id


def run(store: Store, job_id: str) -> None:
    job = store.get(Job, job_id)
    try:
        if job.kind == "eval":
            _eval(store, job)
        elif job.kind == "merge":
            _merge(store, job)
        elif job.kind == "synth":
            _synth(store, job)
        elif job.kind == "tune":
            _tune(store, job)
        else:
            _fine_tune(store, job)
    except Paused:  # one process, or every rank of several (train.launch.PausedRun)
        store.transition(job.id, ACTIVE, status="paused", request=None, pid=None,
                         events=["Job paused at a checkpoint; resume continues from it"])  # fmt: skip
    except DataError as e:
        if job.kind == "synth":  # a document it cannot read: named as uploaded, not by its path on the server
            shown = ((job.options or {}).get("_names") or {}).get(Path(e.path).name, Path(e.path).name)
            _fail(store, job, "invalid_document", f"{shown}: {e.reason}", "spec.docs")
        else:
            _fail(
                store, job, "invalid_training_file", _name_file(store, job, str(e)), _param_of(store, job, e)
            )
    except SpecError as e:
        _fail(store, job, "invalid_hyperparameters", str(e), "method")
    except LmtailorError as e:
        _fail(store, job, "job_failed", str(e), None)
    except Exception as e:  # the traceback goes to the job's log file, the reason to the job
        traceback.print_exc()
        _fail(store, job, "internal_error", f"{type(e).__name__}: {e}", None)


def _fail(store: Store, job: Job, code: str, message: str, param: str | None) -> None:
    store.transition(job.id, ACTIVE, status="failed", finished_at=now(), pid=None, request=None,
                     error={"code": code, "message": message, "param": param},
                     events=[{"message": f"Job failed: {message}", "level": "error"}])  # fmt: skip


def _param_of(store: Store, job: Job, e: DataError) -> str:
    val = store.get(File, job.validation_file) if job.validation_file else None
    more = [m["file"] for m in (job.options or {}).get("more_training_files") or []]
    if e.path and Path(e.path).stem in more:  # a stored file is named <file id><suffix>
        return f"lmtailor.more_training_files[{more.index(Path(e.path).stem)}].file"
    return (
        "validation_file" if val and e.path and Path(e.path).name == Path(val.path).name else "training_file"
    )


def _name_file(store: Store, job: Job, message: str) -> str:
    """Bad-row messages name the uploaded file (its id and name), not its path inside the home."""
    more = [m["file"] for m in (job.options or {}).get("more_training_files") or []]
    for file_id in (job.training_file, job.validation_file, *more):
        f = store.get(File, file_id) if file_id else None
        if f:
            message = message.replace(str(store.path(f.path)), f"{f.id} ({f.filename})")
    return message


def train_spec(store: Store, job: Job, out: Path):
    """The TrainSpec of a fine-tuning job: OpenAI's hyperparameters ("auto" = lmtailor's rule), then
    lmtailor's own options from the job's `lmtailor` extension."""
    from lmtailor.specs import TrainSpec

    hp = job.hyperparameters or {}
    auto = lambda k: None if hp.get(k, "auto") == "auto" else hp[k]  # noqa: E731
    train = store.get(File, job.training_file)
    val = store.get(File, job.validation_file) if job.validation_file else None
    multiplier = auto("learning_rate_multiplier")
    options = dict(job.options or {})
    more = options.pop("more_training_files", None)  # serve/routes/fine_tuning.py _mixture: files mixed in
    data: str | list = str(store.path(train.path))
    if more:  # each file named as it was uploaded (the log, the card, eval_<name>_loss)
        first = {
            "path": data,
            "weight": options.pop("training_file_weight", None),
            "name": _uploaded_stem(train),
        }
        data = [first] + [
            {"path": _stored_path(store, m["file"]), "weight": m.get("weight"),
             "name": _uploaded_stem(store.get(File, m["file"]))}
            for m in more
        ]  # fmt: skip
    options.pop("training_file_weight", None)
    keys = {
        "model": job.base_ref or job.model,
        "data": data,
        "val_data": str(store.path(val.path)) if val else None,
        "output": str(out),
        "epochs": auto("n_epochs"),
        "batch_size": auto("batch_size"),
        "learning_rate_multiplier": float(multiplier) if multiplier is not None else 1.0,
        "beta": auto("beta"),
        "seed": job.seed,
        "keep_checkpoints": True,
        "save_total_limit": 3,  # as OpenAI keeps: the last three
        "resume": True,  # a no-op on a first run; after a crash or a pause it continues from the checkpoint
        **options,
    }
    return TrainSpec(**{k: v for k, v in keys.items() if v is not None})


def _uploaded_stem(f: File | None) -> str | None:
    return Path(f.filename).stem if f and f.filename else None


def _stored_path(store: Store, file_id: str) -> str:
    """Where an uploaded file lies (a deleted one's path too: reading it then fails, naming the file)."""
    f = store.get(File, file_id)
    return str(store.path(f.path)) if f else file_id


def _fine_tune(store: Store, job: Job) -> None:
    from lmtailor.data.formats import load_records

    store.log(job.id, "Validating training file: " + job.training_file)
    out = job_dir(store, job) / "model"
    spec = train_spec(store, job, out)
    if spec.method == "dpo":  # bad lines: DataError, named by line
        from lmtailor.data.preference import load_preferences

        n_rows = len(load_preferences(spec.data)[0])
        if spec.val_data:
            load_preferences(spec.val_data)
    elif spec.method == "reinforcement":
        from lmtailor.train.rft import load_prompts

        n_rows = len(load_prompts(spec.data))
        if spec.val_data:
            load_prompts(spec.val_data)
    else:  # each file of a mixture (lmtailor.more_training_files) as the training file
        n_rows = sum(
            len(load_records(s.path, spec.format, on_error=spec.on_error).records)
            for s in spec.data_sources()
        )
        if spec.val_data:
            load_records(spec.val_data, spec.format, on_error=spec.on_error)
    store.log(job.id, f"Files validated: {n_rows} training rows")
    said = (
        "Fine-tuning job resumed from its last checkpoint"
        if _has_checkpoint(out)
        else "Fine-tuning job started"
    )
    if not _start(store, job, said):
        return
    name = fine_tuned_name(job)
    from lmtailor.models.catalog import resolve
    from lmtailor.train.callbacks import last_loss
    from lmtailor.train.launch import train as launch_train

    callbacks = None  # several processes: rank 0 makes the job's callback itself (rank_callbacks)
    if spec.devices > 1:
        os.environ.update(LMTAILOR_JOB=job.id, LMTAILOR_JOB_HOME=str(store.home), LMTAILOR_JOB_DB=store.url,
                          LMTAILOR_RANK_CALLBACKS="lmtailor.platform.runjob:rank_callbacks")  # fmt: skip
        spec = spec.model_copy(update={"master_port": _free_port()})  # jobs side by side must not share one
    else:
        callbacks = [JobCallback(store, job.id, name, out, str(resolve(spec.model, store.home).path))]
    # one path for one process and many: the run's own lines (replay, retention, what was chosen) are events
    launch_train(spec, home=store.home, log=lambda line: store.log(job.id, line), progress=False,
                 callbacks=callbacks)  # fmt: skip
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    _register(store, name, job.id, out, card, last_loss(out))
    results = _results_file(store, job, out)
    kept = card["metrics"].get("retention")
    if kept:  # before the job turns succeeded: a client that sees it succeed finds what it cost
        from lmtailor.evaluate.retention import summary_line

        store.log(job.id, f"What tuning cost: {summary_line(kept)}", data={"retention": kept})
    store.transition(job.id, ACTIVE, status="succeeded", finished_at=now(), fine_tuned_model=name, pid=None,
                     trained_tokens=int(card["metrics"].get("trained_tokens") or 0), result_files=[results],
                     chosen={k: card["hyperparameters"].get(k) for k in ("epochs", "batch_size", "learning_rate", "strategy", "recite")},
                     events=[f"New fine-tuned model created: {name}", {"message": "The job has successfully completed",
                                                                       "data": {"retention": kept} if kept else None}])  # fmt: skip


def _start(store: Store, job: Job, said: str) -> bool:
    """The job turned running with `said` as its event, in one transaction; False when it is no longer active
    (cancelled while its files were checked): then it does nothing more."""
    return store.transition(job.id, ACTIVE, status="running", started_at=job.started_at or now(),
                            output=store.rel(job_dir(store, job)), events=[said])  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_checkpoint(out: Path) -> bool:
    from lmtailor.train.core import last_checkpoint

    return last_checkpoint(out) is not None


def _register(store: Store, name: str, job_id: str, folder: Path, card: dict | None, loss) -> None:
    """A servable model row: LoRA weights as an adapter on the base, anything else as full weights."""
    adapter = None
    if (folder / "adapter_config.json").exists():
        adapter = folder
    elif card and card.get("adapter") and (folder / card["adapter"] / "adapter_config.json").exists():
        adapter = folder / card["adapter"]
    base = card.get("base_path") if card else None
    with store.session() as s, s.begin():
        s.merge(Model(name=name, job_id=job_id, path=store.rel(folder), adapter=store.rel(adapter) if adapter else None,
                      base_path=base if adapter else None, created_at=now(), loss=loss))  # fmt: skip


def _results_file(store: Store, job: Job, out: Path) -> str:
    """metrics.jsonl as the CSV OpenAI gives as a `fine-tune-results` file."""
    from lmtailor.train.callbacks import read_metrics

    rows = [r for r in read_metrics(out / "metrics.jsonl") if "step" in r]
    fields = ["step", "train_loss", "learning_rate", "valid_loss", "epoch"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({"step": r.get("step"), "train_loss": r.get("loss"), "learning_rate": r.get("learning_rate"),
                         "valid_loss": r.get("eval_loss"), "epoch": r.get("epoch")})  # fmt: skip
    file_id = new_id("file")
    rel = f"files/{file_id}.csv"
    from lmtailor.home import atomic_write_text

    atomic_write_text(store.path(rel), buf.getvalue())
    store.add_file(file_id, rel, "step_metrics.csv", "fine-tune-results")
    return file_id


def _eval(store: Store, job: Job) -> None:
    from lmtailor.evaluate.runner import run_eval
    from lmtailor.evaluate.spec import EvalSpec

    out = job_dir(store, job) / "eval"
    options = {k: v for k, v in job.options.items() if k != "_names"}  # routes/jobs.py NAMES: for display
    spec = EvalSpec(**{**options, "output": str(out)})
    if not _start(store, job, "Evaluation started"):
        return
    result = run_eval(spec, home=store.home, log=lambda line: store.log(job.id, line))
    store.log(job.id, "Evaluation finished", data=eval_summary(result))
    store.transition(job.id, ACTIVE, status="succeeded", finished_at=now(), pid=None)


def _merge(store: Store, job: Job) -> None:
    from lmtailor.merge.run import run_merge
    from lmtailor.specs import MergeSpec

    out = job_dir(store, job) / "model"
    options = {k: v for k, v in job.options.items() if k != "_names"}
    spec = MergeSpec(**{**options, "output": str(out)})
    if not _start(store, job, f"Merging {len(spec.models)} models with {spec.method}"):
        return
    shutil.rmtree(out, ignore_errors=True)  # a merge interrupted by a killed server starts over
    run_merge(spec, home=store.home, log=lambda line: store.log(job.id, line))
    name = f"merged:{job.suffix or spec.method}:{job.id}"
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    _register(store, name, job.id, out, card, None)
    store.transition(job.id, ACTIVE, status="succeeded", finished_at=now(), fine_tuned_model=name, pid=None,
                     events=[f"Merged model created: {name}"])  # fmt: skip


def public_report(report: dict, generator: str, files: list[str]) -> dict:
    """A synth report as the API shows it: documents and generator by the names the client gave, no paths."""
    out = {k: v for k, v in report.items() if k not in ("files", "spec")}
    out["spec"] = {k: v for k, v in report["spec"].items() if k not in ("docs", "output", "generator", "tokenizer",
                                                                       "api_key_env")}  # fmt: skip
    out["generator"] = generator
    out["files"] = dict(zip(("train", "eval", "report"), files, strict=False))
    return out


def _synth(store: Store, job: Job) -> None:
    """Documents -> training set. Finished chunks are saved in the job's folder, so a restarted job continues."""
    from lmtailor.specs import SynthSpec
    from lmtailor.synth import run_synth

    out = job_dir(store, job) / "synth" / "train.jsonl"
    options = {k: v for k, v in job.options.items() if k != "_names"}
    spec = SynthSpec(**{**options, "output": str(out)})
    if not _start(store, job, f"Synthesizing question-answer pairs with {job.model}"):
        return
    report = run_synth(spec, home=store.home, log=lambda line: store.log(job.id, line),
                       names=job.options.get("_names"))  # fmt: skip
    files = []
    for key, purpose, filename in (("train", "fine-tune", "synth_train.jsonl"), ("eval", "evals", "synth_eval.jsonl"),
                                   ("report", "user_data", "synth_report.json")):  # fmt: skip
        src = Path(report["files"][key])
        file_id = new_id("file")
        rel = f"files/{file_id}{src.suffix}"
        if key == "report":  # the counts and options, not the server's paths
            text = json.dumps(
                public_report(report, job.model, [*files, file_id]), ensure_ascii=False, indent=1
            )
        else:
            text = src.read_text(encoding="utf-8")
        atomic_write_text(store.path(rel), text)
        store.add_file(file_id, rel, filename, purpose)
        files.append(file_id)
    summary = {
        k: report[k]
        for k in ("chunks", "pairs_generated", "pairs_kept", "train_rows", "eval_rows", "dropped")
    }
    store.log(job.id, f"Synthesis finished: {report['train_rows']} training rows, {report['eval_rows']} eval rows",
              data={**summary, "files": dict(zip(("train", "eval", "report"), files, strict=True))})  # fmt: skip
    store.transition(job.id, ACTIVE, status="succeeded", finished_at=now(), result_files=files, pid=None)


def _tune(store: Store, job: Job) -> None:
    """A search (tune/search.py) in the job's folder: a restarted job reopens its study and goes on. Each trial
    is an event; the best model so far is served under the job's model name, and the final best at the end."""
    from lmtailor.specs import TuneSpec
    from lmtailor.tune.search import run_tune

    out = job_dir(store, job) / "tune"
    spec = TuneSpec(**{**job.options, "output": str(out)})
    if not _start(
        store, job, f"Search started ({spec.trials or 'no'} trial limit, budget {spec.budget or 0:.0f} s)"
    ):
        return
    name = fine_tuned_name(job)

    def trial_ended(row: dict, best: Path | None) -> None:
        ended = row["stopped"] or row["state"]
        value = "" if row["value"] is None else f": {row['value']:.3f}"
        store.log(job.id, f"Trial {row['number']}{' (the default rule)' if row['default'] else ''} {ended}{value}",
                  data=row)  # fmt: skip
        if best is not None:
            _register(
                store, name, job.id, best, json.loads((best / "lmtailor.json").read_text("utf-8")), None
            )

    record = run_tune(spec, home=store.home, log=lambda line: store.log(job.id, line), on_trial=trial_ended)
    model = out / "model"
    _register(store, name, job.id, model, json.loads((model / "lmtailor.json").read_text("utf-8")), None)
    best = record["best"]
    store.transition(job.id, ACTIVE, status="succeeded", finished_at=now(), fine_tuned_model=name, pid=None,
                     events=[f"Search finished: trial {best['number']} is the best; served as {name}"])  # fmt: skip


class JobCallback:
    """Trainer callback: metrics as events, checkpoints as servable models, pause requests honoured."""

    def __new__(cls, *args, **kwargs):
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self, store: Store, job_id: str, name: str, out: Path, base_path: str):
                self.store, self.job_id, self.name, self.out = store, job_id, name, out
                self.base_path = base_path  # LoRA checkpoints are served as adapters on it
                self.last_loss = None
                self.pausing = False

            def on_log(self, args, state, control, logs=None, **kw):
                logs = logs or {}
                self.last_loss = logs.get("loss", self.last_loss)
                said = step_event(logs, state.global_step, state.max_steps)
                if said:
                    self.store.log(self.job_id, said[0], type="metrics", data=said[1])

            def on_step_end(self, args, state, control, **kw):
                job = self.store.get(Job, self.job_id)
                if agree(job.request == "pause" and state.global_step < state.max_steps):
                    self.pausing = True
                    control.should_save = True  # on_save below then stops the run

            def on_save(self, args, state, control, **kw):
                folder = self.out / "checkpoints" / f"checkpoint-{state.global_step}"
                name = f"{self.name}:ckpt-step-{state.global_step}"
                card = {"base_path": self.base_path, "adapter": None}
                _register(self.store, name, self.job_id, folder, card, self.last_loss)
                self.store.add(Checkpoint(id=new_id("ftckpt"), job_id=self.job_id, step=state.global_step,
                                          created_at=now(), model=name, path=self.store.rel(folder),
                                          metrics={"step": state.global_step, "train_loss": self.last_loss}))  # fmt: skip
                self.store.log(self.job_id, f"Checkpoint created at step {state.global_step}: {name}")
                _forget_rotated(self.store, self.job_id)
                if self.pausing:
                    barrier()  # the other ranks wait until this checkpoint is written and registered
                    raise Paused()

        return _Callback(*args, **kwargs)


def step_event(logs: dict, step: int, total: int) -> tuple[str, dict] | None:
    """A Trainer's log (or a metrics.jsonl row, which holds the same keys) as a job's metrics event: its message
    and data; None for a log without a loss or reward (the run's summary, a generated metric's scores)."""
    if not {"loss", "eval_loss", "reward", "eval_reward"} & set(logs):
        return None
    data = {"step": step, "total_steps": total}
    if "loss" in logs:
        data["train_loss"] = logs["loss"]
    if "eval_loss" in logs:
        data["valid_loss"] = logs["eval_loss"]
    if "learning_rate" in logs:
        data["learning_rate"] = logs["learning_rate"]
    if "reward" in logs or "eval_reward" in logs:  # reinforcement: the grader's mean reward
        data["train_reward" if "reward" in logs else "valid_reward"] = logs.get(
            "reward", logs.get("eval_reward")
        )
    for key in ("rewards/accuracies", "rewards/margins"):  # dpo: train and validation
        for prefix in ("", "eval_"):
            if prefix + key in logs:
                data[("valid_" if prefix else "train_") + key.replace("rewards/", "reward_")] = logs[
                    prefix + key
                ]
    text = ", ".join(
        f"{k}={v:.4g}" for k, v in data.items() if k.endswith(("loss", "rate", "accuracies", "margins"))
    )
    return f"Step {step}/{total}: {text}", data


def eval_summary(result: dict) -> dict:
    """Each model's score per metric, from run_eval's result: the data of an evaluation's last event."""
    return {m["name"]: {k: v["value"] for k, v in m["scores"].items()} for m in result["models"]}


def agree(value: bool) -> bool:
    """Rank 0's answer on every rank when several processes train (they must pause at the same step)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rank_callbacks(spec) -> list:
    """The job's callbacks in one process of a multi-process run (train/launch.py): rank 0 writes the events
    and checkpoints as a one-process job does; the others only follow its pause decisions."""
    from transformers import TrainerCallback

    job_id, home, db = (
        os.environ["LMTAILOR_JOB"],
        os.environ["LMTAILOR_JOB_HOME"],
        os.environ["LMTAILOR_JOB_DB"],
    )
    from lmtailor.train.core import is_rank0

    if is_rank0():
        from lmtailor.models.catalog import resolve

        store = Store(home, db or None)
        job = store.get(Job, job_id)
        base = str(resolve(spec.model, store.home).path)
        return [JobCallback(store, job_id, fine_tuned_name(job), Path(spec.output), base)]

    class Follower(TrainerCallback):
        pausing = False

        def on_step_end(self, args, state, control, **kw):
            if agree(False):
                self.pausing = control.should_save = True

        def on_save(self, args, state, control, **kw):
            if self.pausing:
                barrier()  # rank 0 is still writing and registering the checkpoint
                raise Paused()

    return [Follower()]


def _forget_rotated(store: Store, job_id: str) -> None:
    """The trainer keeps the last few checkpoints on disk (save_total_limit): drop the rows of deleted ones,
    so every listed checkpoint can be served."""
    from sqlalchemy import select

    with store.session() as s, s.begin():
        for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)):
            if not store.path(c.path).is_dir():
                model = s.get(Model, c.model)
                if model:
                    s.delete(model)
                s.delete(c)


def _die_with_parent() -> None:
    """SIGTERM when the server that started us dies (Linux's parent-death signal), set here rather than in a
    preexec_fn, which is unsafe in a threaded server; and if it already died before this line, stop now."""
    parent = os.environ.get("LMTAILOR_PARENT_PID")
    if not parent or not die_with_parent():
        return
    if os.getppid() != int(parent):
        sys.exit("the server that started this job is gone")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("job_id")
    ap.add_argument("--home", required=True)
    ap.add_argument("--db")
    args = ap.parse_args()
    _die_with_parent()
    from lmtailor.models.loading import use_given_threads

    use_given_threads()
    run(Store(args.home, args.db), args.job_id)


if __name__ == "__main__":
    main()
