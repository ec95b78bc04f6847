"""`run_tune(spec)`: trials of `lmtailor train` on one validation split, searched by Optuna, the best kept.

split      the training file into train.jsonl / val.jsonl in the output folder, once (data/split.py:
           whole phrasings held out, labels stratified), so every trial and a resumed search see the same rows
study      Optuna's TPE over tune/space.py in study.db (SQLite) beside them: a killed search reopens it,
           finished trials stay finished, a trial cut short by the kill runs again
trials     one at a time in this process; trial 0 is the default rule; each validates every epoch on the
           search's metric (generated answers), keeps its best checkpoint, and is pruned by the median
           of the trials before it, or stopped when the budget runs out
the best   trial by the metric among those that keep at least the retention floor, moved to output/model;
           tune.json records every trial, and report.md / report.html (tune/report.py) show them
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmtailor.errors import LmtailorError
from lmtailor.home import atomic_write_json, atomic_write_text
from lmtailor.specs import TrainSpec, TuneSpec, build_spec
from lmtailor.tune.report import describe, write_report
from lmtailor.tune.space import plan_params, suggest

STUDY = "lmtailor-tune"
FLOOR_MARGIN = 0.05  # the default retention floor: the default rule's retention minus this


class BudgetSpent(Exception):
    """Raised inside a trial's training when the search's time is up."""


def run_tune(spec: TuneSpec, home=None, log: Callable = print, pruner=None, on_trial: Callable | None = None,
             ) -> dict[str, Any]:  # fmt: skip
    """Search, keep the best trial's model in `spec.output`/model, and return the record written to tune.json.
    `pruner`: an Optuna pruner (default: the median of the earlier trials at the same epoch, from the second
    epoch of the third trial on);
    `on_trial(row, best)`: called as each trial ends, with its tune.json row and the folder of the best model so
    far (None before one finishes): a job serves it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    train_file, val_file, how = split_once(spec, out, log)
    metric = spec.metric or pick_metric(spec, (train_file, val_file))
    base = build_spec(TrainSpec, {
        "model": spec.model, "data": str(train_file), "val_data": str(val_file), "format": "chat",
        "seed": spec.seed, "eval_metrics": [metric], "best_metric": metric, "keep_best": True,
        "retention": spec.retention, "precision": spec.precision, "trust_remote_code": spec.trust_remote_code,
    })  # fmt: skip
    from lmtailor.train.memory import dry_run

    plan = dry_run(base, home)["plan"]  # what the rule picks for these rows: trial 0
    with one_search(out):
        study, storage = open_study(spec, out, pruner)
        retried = recover(study, storage)
        if retried:
            log(f"trials {', '.join(map(str, retried))} were cut short by a stop: they run again")
        if not study.trials:
            # None: the rule picked outside the space (trial 0 then trains it all the same)
            params = plan_params(plan, base.lora_r, spec.strategies)
            study.enqueue_trial(params or {}, user_attrs={"default": True, "in_space": params is not None})
        log(f"search: {metric} on {val_file.name} ({how}); {limits(spec)}; study {out / 'study.db'}")
        stopped = search(spec, study, base, plan, out, metric, home, log, on_trial)
        return finish(spec, study, out, metric, how, stopped, log)


@contextmanager
def one_search(out: Path):
    """One process at a time on a search folder (a second would fail the first one's running trial as stale)."""
    import fcntl

    with (out / "tune.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LmtailorError(f"{out}: another `lmtailor tune` is running on this folder") from None
        yield


def split_once(spec: TuneSpec, out: Path, log: Callable) -> tuple[Path, Path, str]:
    """train.jsonl and val.jsonl in `out`: written by the first start, read back by every later one."""
    from lmtailor.data.formats import load_records

    train_file, val_file, meta = out / "train.jsonl", out / "val.jsonl", out / "split.json"
    settings = {k: getattr(spec, k) for k in SAME_SEARCH}
    if meta.exists():
        done = json.loads(meta.read_text(encoding="utf-8"))
        changed = [k for k in SAME_SEARCH if done.get("settings", {}).get(k, settings[k]) != settings[k]]
        if done["data"] != spec.data or changed:
            what = ", ".join(f"{k} {done['settings'][k]!r}" for k in changed) or f"data {done['data']}"
            raise LmtailorError(
                f"{out} holds a search with {what}: continue it with the same, or give another --output"
            )
        return train_file, val_file, done["how"]
    rows = load_records(spec.data, fmt=spec.format, on_error=spec.on_error).records
    if spec.val_data:
        train, val = rows, load_records(spec.val_data, fmt=spec.format, on_error=spec.on_error).records
        how = f"validation file {Path(spec.val_data).name}"
    else:
        train, val, how = held_out(rows, spec)
    if not train or not val:
        raise LmtailorError(
            f"{spec.data}: {len(train)} training and {len(val)} validation rows; a search needs both"
        )
    for path, records in ((train_file, train), (val_file, val)):
        atomic_write_text(path, "".join(json.dumps(r.to_chat(), ensure_ascii=False) + "\n" for r in records))
    atomic_write_json(
        meta, {"how": how, "train": len(train), "val": len(val), "data": spec.data, "settings": settings}
    )
    log(f"split: {len(train)} training rows, {len(val)} for validation ({how})")
    return train_file, val_file, how


# What a continued search must share with the one it continues (budget, trials and the floor may change)
SAME_SEARCH = ("model", "val_data", "val_ratio", "metric", "seed", "strategies", "retention", "precision")


def held_out(rows: list, spec: TuneSpec) -> tuple[list, list, str]:
    from lmtailor.data.augment import single_answer
    from lmtailor.data.split import held_out_phrasings
    from lmtailor.evaluate.metrics import pick_metrics

    answers = [single_answer(r) for r in rows]
    labels = "f1" in pick_metrics([a for a in answers if a is not None] or [""])
    return held_out_phrasings(rows, answers, spec.val_ratio, seed=spec.seed, labels=labels)


def pick_metric(spec: TuneSpec, files: tuple[Path, Path]) -> str:
    """f1 (macro) where the answers (training and validation) are a few labels, else contains."""
    from lmtailor.data.formats import load_records
    from lmtailor.evaluate.metrics import pick_metrics
    from lmtailor.train.callbacks import val_rows

    references = [row.reference for path in files for row in val_rows(load_records(str(path)).records)]
    return "f1" if "f1" in pick_metrics(references) else "contains"


def open_study(spec: TuneSpec, out: Path, pruner):
    import optuna

    sampler = optuna.samplers.TPESampler(seed=spec.seed)  # reseeded below, once the study's trials are known
    # not before two trials have finished, nor at a trial's first epoch (the quickstart's default scored 0.07
    # there and 0.20 at its fourth: a first epoch says little). Optuna may prune at step == n_warmup_steps, and
    # steps are epochs from 1: 2 is the second epoch.
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)  # fmt: skip
    # A resumed session draws on from where the last one stopped (the same seed would draw its trials again);
    # TPE after 3 trials, not Optuna's 10 random ones: a 15-minute search of a small model runs about 4. TPE
    # reads each trial's constraint (run_trial sets it: the retention floor).
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + len(study.trials), n_startup_trials=3)
    return study, storage


def recover(study, storage) -> list[int]:
    """Trials left running by a killed search (the lock says no other process runs one): failed, and their
    parameters queued to run again. Optuna's own way, heartbeats, needs study.optimize(); the search asks and
    tells, so it fails them here, by the storage id a FrozenTrial keeps."""
    from optuna.trial import TrialState

    again = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, "cut_short", True)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        attrs = {k: v for k, v in trial.user_attrs.items() if k in ("default", "in_space")}
        study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": trial.number})
        again.append(trial.number)
    return again


def limits(spec: TuneSpec) -> str:
    parts = [f"budget {spec.budget:.0f} s"] if spec.budget else []
    return ", ".join(parts + ([f"at most {spec.trials} trials"] if spec.trials else []))


def search(spec: TuneSpec, study, base: TrainSpec, plan: dict, out: Path, metric: str, home, log, on_trial,
           ) -> str:  # fmt: skip
    """Trials until the budget or the count is spent (failed trials count), or MAX_FAILED fail in a row; returns
    why it stopped ("trials", "budget", "failures"). The time spent is saved in the study as trials run, so a resumed search keeps to the budget."""
    from optuna.trial import TrialState

    clock = Clock(study)
    failed = 0
    while True:
        ended = study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )
        if spec.trials and len([t for t in ended if not t.user_attrs.get("cut_short")]) >= spec.trials:
            return "trials"  # (a trial a stop cut short runs again: counted once)
        if spec.budget and not room_for_another(spec.budget - clock.spent(), ended):
            return "budget"
        if failed >= MAX_FAILED:  # the best so far stays the result (finish); with none, finish says why
            last = ended[-1].user_attrs.get("error")
            study.set_user_attr("failures", f"{failed} trials failed in a row, the last: {last}")
            return "failures"
        trial = study.ask()
        deadline = time.time() + (spec.budget - clock.spent() if spec.budget else float("inf"))
        state = one_trial(trial, spec, base, plan, out, metric, deadline, home, log, clock)
        failed = failed + 1 if state == TrialState.FAIL else 0
        best = best_trial(study)
        folder = out / "trials" / f"{best.number:03d}" if best else None
        if on_trial:  # the new best is served before the old one's folder goes
            on_trial(trial_row(study.trials[trial.number]), folder if folder and folder.exists() else None)
        keep_best_only(study, out)


MAX_FAILED = 3  # trials failing one after another: the search stops with the last one's error


class Clock:
    """The search's time across sessions: the study's `spent_s` plus this session's, saved every 10 s at most."""

    def __init__(self, study):
        self.study, self.before, self.start, self.saved = study, float(study.user_attrs.get("spent_s", 0.0)), \
            time.time(), 0.0  # fmt: skip

    def spent(self) -> float:
        return self.before + time.time() - self.start

    def save(self, force: bool = False) -> None:
        if force or time.time() - self.saved >= 10:
            self.study.set_user_attr("spent_s", round(self.spent(), 1))
            self.saved = time.time()


def one_trial(trial, spec, base, plan, out: Path, metric: str, deadline: float, home, log, clock):
    """Run one trial and tell the study how it ended (complete, pruned, stopped by the budget, failed); a
    failed trial keeps its error, and anything but our own errors is raised after the study knows."""
    import optuna
    from optuna.trial import TrialState

    t0, folder = time.time(), out / "trials" / f"{trial.number:03d}"
    try:
        value = run_trial(trial, spec, base, plan, out, metric, deadline, home, log, clock)
    except (optuna.TrialPruned, BudgetSpent) as e:
        why = "budget" if isinstance(e, BudgetSpent) else "pruned"
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        trial.set_user_attr("stopped", why)
        study_tell(trial, TrialState.PRUNED, folder)
        log(f"trial {trial.number}: {'stopped by the budget' if why == 'budget' else 'pruned'}")
        return TrialState.PRUNED
    except Exception as e:  # noqa: BLE001 - the study must know, or every rerun retries the same crash
        trial.set_user_attr("error", str(e) if isinstance(e, LmtailorError) else f"{type(e).__name__}: {e}")
        study_tell(trial, TrialState.FAIL, folder)
        log(f"trial {trial.number}: failed: {trial.user_attrs['error']}")
        if not isinstance(e, LmtailorError):  # a bug: the traceback, after the study is consistent
            raise
        return TrialState.FAIL
    finally:
        clock.save(force=True)
        free()
    trial.study.tell(trial, value)
    return TrialState.COMPLETE


def study_tell(trial, state, folder: Path) -> None:
    """A trial that did not complete leaves no model."""
    shutil.rmtree(folder, ignore_errors=True)
    trial.study.tell(trial, state=state)


def room_for_another(remaining: float, done: list) -> bool:
    """Time for one more trial: some left, and at least half what a finished trial took at the median."""
    took = [
        t.user_attrs["seconds"]
        for t in done
        if "seconds" in t.user_attrs and t.user_attrs.get("stopped") is None
    ]
    return remaining > 0 and (not took or remaining >= 0.5 * statistics.median(took))


def run_trial(trial, spec: TuneSpec, base: TrainSpec, plan: dict, out: Path, metric: str, deadline: float, home,
              log, clock: Clock) -> float:  # fmt: skip
    """Train one trial; its value is the best validation score of its run (the checkpoint it keeps)."""
    from lmtailor.train.callbacks import read_metrics
    from lmtailor.train.sft import run_sft

    default = bool(trial.user_attrs.get("default"))
    if not default or trial.user_attrs.get("in_space"):  # the rule's picks recorded as trial 0's parameters
        fields = suggest(
            trial, spec.strategies, plan["epochs"], replay="no_replay" not in trial.study.user_attrs
        )
    if default:
        fields = {}  # trial 0 trains the rule itself
    folder = out / "trials" / f"{trial.number:03d}"
    shutil.rmtree(folder, ignore_errors=True)
    spec_ = build_spec(TrainSpec, {**base.model_dump(exclude_unset=True), **fields, "output": str(folder)})
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.time()
    with (logs / f"{trial.number:03d}.log").open("w", encoding="utf-8") as f:
        write = lambda line: print(line, file=f, flush=True)  # noqa: E731
        run_sft(
            spec_,
            home=home,
            progress=False,
            log=write,
            callbacks=[trial_callback(trial, metric, deadline, clock)],
        )
    card = json.loads((folder / "lmtailor.json").read_text(encoding="utf-8"))
    scores = [
        row[f"eval_{metric}"] for row in read_metrics(folder / "metrics.jsonl") if f"eval_{metric}" in row
    ]
    if not scores:
        raise LmtailorError(
            f"trial {trial.number}: no validation score for {metric} in {folder / 'metrics.jsonl'}"
        )
    value = max(scores)
    retention = (card["metrics"].get("retention") or {}).get("value")
    floor = retention_floor(spec, trial.study, retention if trial.user_attrs.get("default") else None)
    trial.set_user_attr("seconds", round(time.time() - t0, 1))
    trial.set_user_attr("retention", retention)
    # <= 0: the trial keeps the floor; the sampler prefers such trials, best_trial takes only them. Where a floor
    # applies and the trial's retention could not be measured, it cannot be shown to keep it: infeasible.
    if floor is None:
        constraint = 0.0
    else:
        constraint = floor - retention if retention is not None else 1.0
    trial.set_user_attr("constraint", constraint)
    trial.set_constraint("retention_floor", constraint)
    trial.set_user_attr("chosen", {k: card["hyperparameters"].get(k) for k in HYPERPARAMETERS})
    if default and plan["replay_ratio"] and not card["hyperparameters"].get("replay_ratio"):
        # the rule's replay fell back (a base without a chat template, or no usable answer): a trial that asks
        # for replay would fail, so the search draws none from now on
        trial.study.set_user_attr("no_replay", card["defaults_chosen"].get("replay_ratio", "no replay"))
    log(f"trial {trial.number}{' (the default rule)' if trial.user_attrs.get('default') else ''}: {metric} "
        f"{value:.3f}, retention {_pct(retention)}, {time.time() - t0:.0f} s: {describe(trial.user_attrs['chosen'])}")  # fmt: skip
    return value


HYPERPARAMETERS = ("strategy", "learning_rate", "epochs", "batch_size", "lora_r", "neftune_alpha", "replay_ratio",
                   "recite", "freeze_modules")  # fmt: skip


def retention_floor(spec: TuneSpec, study, default_retention: float | None) -> float | None:
    """The least retention a winner keeps: the spec's, else the default rule's minus FLOOR_MARGIN (recorded in the
    study when trial 0 finishes); None where retention is not measured."""
    if not spec.retention:
        return None
    if spec.retention_floor is not None:
        return spec.retention_floor
    if default_retention is not None and "floor" not in study.user_attrs:
        study.set_user_attr("floor", max(0.0, default_retention - FLOOR_MARGIN))
    return study.user_attrs.get("floor")


def trial_callback(trial, metric: str, deadline: float, clock: Clock):
    """Reports each validation's score to Optuna (which may prune the trial), saves the time spent, and stops at
    the deadline (checked after each step: before an epoch's validation too)."""
    import optuna
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        ended = False

        def on_train_end(self, args, state, control, **kwargs):
            self.ended = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None or self.ended:
                return  # the evaluation after training (of the kept checkpoint) is not a new epoch
            trial.report(value, step=max(1, round(state.epoch or 0)))
            if trial.should_prune():
                raise optuna.TrialPruned()

        def on_step_end(self, args, state, control, **kwargs):
            clock.save()
            if time.time() > deadline:
                raise BudgetSpent()

    return Report()


def keep_best_only(study, out: Path) -> None:
    """Only the best feasible trial's model stays on disk (each is a whole model); others keep their log."""
    best = best_trial(study)
    for folder in sorted((out / "trials").glob("[0-9][0-9][0-9]")):
        if best is None or int(folder.name) != best.number:
            shutil.rmtree(folder, ignore_errors=True)


def best_trial(study):
    """The finished trial with the highest value among those keeping the retention floor (the earliest on a
    tie: the default rule wins ties)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    feasible = [t for t in done if t.user_attrs.get("constraint", 0.0) <= 0]
    return max(feasible, key=lambda t: (t.value, -t.number), default=None)


def finish(spec: TuneSpec, study, out: Path, metric: str, how: str, stopped: str, log) -> dict[str, Any]:
    """Move the best trial's model to out/model; write tune.json and the report; return the record."""
    from optuna.trial import TrialState

    best = best_trial(study)
    if stopped == "failures":
        log(f"search stopped: {study.user_attrs['failures']}")
        if best is None:
            raise LmtailorError(study.user_attrs["failures"])
    if best is None:
        floor = retention_floor(spec, study, None)
        if floor is not None and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            raise LmtailorError(f"no finished trial kept the retention floor ({floor:.0%} of the base): lower "
                                "--retention-floor, or give the search more time")  # fmt: skip
        raise LmtailorError(f"no trial finished (stopped by the {stopped}): give the search more time (--budget) "
                            "or trials")  # fmt: skip
    model = out / "model"
    folder = out / "trials" / f"{best.number:03d}"
    if folder.exists():
        shutil.rmtree(model, ignore_errors=True)
        os.replace(folder, model)
    shutil.rmtree(
        out / "trials", ignore_errors=True
    )  # what a killed or failed trial left: the best is model/
    record = tune_record(spec, study, metric, how, stopped, best)
    atomic_write_json(out / "tune.json", record)
    try:
        write_report(out, record, study)
    except Exception as e:  # noqa: BLE001 - the model and tune.json are what matter; the report says the same
        log(f"report: not written: {type(e).__name__}: {e}")
    default = record["default"]
    log(f"best: trial {best.number}: {metric} {best.value:.3f}, retention {_pct(best.user_attrs.get('retention'))}"
        f"; the default rule: {_score(default, metric)}; model in {model}")  # fmt: skip
    return record


def tune_record(spec: TuneSpec, study, metric: str, how: str, stopped: str, best) -> dict[str, Any]:
    trials = [trial_row(t) for t in study.trials]
    default = next((row for row in trials if row["default"] and row["state"] == "complete"), None)
    return {
        "metric": metric, "split": how, "stopped_by": stopped, "budget_s": spec.budget, "max_trials": spec.trials,
        "spent_s": study.user_attrs.get("spent_s"), "retention_floor": retention_floor(spec, study, None),
        "best": trial_row(best), "default": default, "trials": trials, "seed": spec.seed, "data": spec.data,
        "model": spec.model, "strategies": spec.strategies, "no_replay": study.user_attrs.get("no_replay"),
        "failures": study.user_attrs.get("failures") if stopped == "failures" else None,
    }  # fmt: skip


def trial_row(t) -> dict[str, Any]:
    return {
        "number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
        "default": bool(t.user_attrs.get("default")), "retention": t.user_attrs.get("retention"),
        "seconds": t.user_attrs.get("seconds"), "stopped": t.user_attrs.get("stopped"),
        "chosen": t.user_attrs.get("chosen"), "error": t.user_attrs.get("error"),
        "retry_of": t.user_attrs.get("retry_of"),
        "started": t.datetime_start.isoformat() if t.datetime_start else None,
    }  # fmt: skip


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.0%}"


def _score(row: dict | None, metric: str) -> str:
    if row is None:
        return "did not finish"
    return f"{metric} {row['value']:.3f}, retention {_pct(row['retention'])}"


def free() -> None:
    import gc

    from lmtailor.train.core import free_memory

    gc.collect()
    free_memory()
