"""OpenAI's /v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints.

Methods supervised, dpo and reinforcement; lmtailor's own TrainSpec keys ride along in `lmtailor`, several
training files among them (`lmtailor.more_training_files`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from lmtailor.platform.store import Checkpoint, Event, Job, Store, new_id, now
from lmtailor.platform.store import File as StoredFile
from lmtailor.serve.protocol import ApiError
from lmtailor.serve.shared import (
    PoolDep,
    StoreDep,
    WorkerDep,
    check_limit,
    find_file,
    find_job,
    find_model,
    invalid,
    job_children,
    job_json,
    ordered_after,
    page,
    queue_job,
)

UNSUPPORTED: dict[str, str] = {}  # method types OpenAI has and lmtailor not yet: type -> its name
RL_HYPERPARAMETERS = ("eval_interval", "eval_samples", "compute_multiplier", "reasoning_effort")

router = APIRouter()


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Literal["auto"] | int = Field("auto", json_schema_extra={"minimum": 1})
    batch_size: Literal["auto"] | int = "auto"
    learning_rate_multiplier: Literal["auto"] | float = "auto"
    beta: Literal["auto"] | float = "auto"  # dpo only

    def checked(self) -> dict:
        for name in ("n_epochs", "batch_size"):
            value = getattr(self, name)
            if value != "auto" and value < 1:
                raise ApiError(400, f"{name} must be 'auto' or at least 1", param=f"hyperparameters.{name}")
        if self.beta != "auto" and self.beta <= 0:
            raise ApiError(400, "beta must be 'auto' or above 0", param="hyperparameters.beta")
        lr = self.learning_rate_multiplier
        if lr != "auto" and lr <= 0:
            raise ApiError(400, "learning_rate_multiplier must be 'auto' or above 0",
                           param="hyperparameters.learning_rate_multiplier")  # fmt: skip
        return self.model_dump()


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: dict | None = None  # deprecated by OpenAI in favour of method, still accepted
    method: dict | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)  # what the trainer's numpy takes (and the store holds)
    metadata: dict[str, str] | None = None
    lmtailor: dict[str, Any] | None = None  # lmtailor's own TrainSpec keys (strategy, lora_r, …)


@router.post("/v1/fine_tuning/jobs")
async def create_job(body: JobCreate, store: StoreDep, pool: PoolDep, worker: WorkerDep):
    kind, hp, method_options = _method(body)
    base_ref = find_model(pool, body.model).ref
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id:
            f = find_file(store, file_id, param)
            if f.purpose != "fine-tune":
                raise ApiError(400, f"{file_id} has purpose {f.purpose!r}, not 'fine-tune'", param=param)
    extra = dict(body.lmtailor or {})
    mixture = _mixture(store, body.training_file, extra)  # lmtailor.more_training_files, checked now
    if mixture and kind != "supervised":
        raise ApiError(400, f"lmtailor.more_training_files: several training files are mixed for method "
                       f"supervised only, not {kind}", param="lmtailor.more_training_files")  # fmt: skip
    options = {**_options(extra, method_options), **mixture, **method_options}
    job = Job(id=new_id("ftjob"), kind="fine_tune", status="queued", model=body.model, base_ref=base_ref,
              training_file=body.training_file, validation_file=body.validation_file,
              method={"type": kind, kind: {"hyperparameters": hp}}, hyperparameters=hp, options=options,
              suffix=body.suffix, seed=body.seed if body.seed is not None else 42, job_metadata=body.metadata,
              created_at=now(), result_files=[])  # fmt: skip
    return queue_job(store, worker, job, f"Created fine-tuning job: {job.id}")


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request, store: StoreDep, after: str | None = None, limit: int = 20):
    limit = check_limit(limit)
    wanted = {
        k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")
    }
    with store.session() as s:
        q = ordered_after(s, select(Job).where(Job.kind == "fine_tune"), Job, after, "desc")
        rows = [j for j in s.scalars(q) if all((j.job_metadata or {}).get(k) == v for k, v in wanted.items())]
    return page([job_json(j) for j in rows[: limit + 1]], limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def get_job(job_id: str, store: StoreDep):
    return job_json(find_job(store, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, store: StoreDep, worker: WorkerDep):
    find_job(store, job_id)
    # each change holds only if the job is still where we saw it: the worker may claim it meanwhile
    if store.transition(job_id, ("queued", "paused"), status="cancelled", finished_at=now(), request=None,
                        events=["Job cancelled"]):  # fmt: skip
        return job_json(find_job(store, job_id))
    if not store.ask(job_id, "cancel"):
        raise ApiError(400, f"job {job_id} already {find_job(store, job_id).status}", param="job_id")
    worker.wake()
    return job_json(find_job(store, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(job_id: str, store: StoreDep):
    if find_job(store, job_id).kind == "tune":  # its trials are not checkpoints: cancel ends it, record kept
        raise ApiError(400, f"job {job_id} is a search: it cannot pause (cancel stops it; its trials are recorded)",
                       param="job_id")  # fmt: skip
    if store.transition(job_id, ("queued",), status="paused", events=["Job paused before it started"]):
        return job_json(find_job(store, job_id))
    if store.ask(job_id, "pause"):
        store.log(job_id, "Pause requested: the job stops at its next step, after a checkpoint")
    else:
        job = find_job(store, job_id)
        why = "a cancel is pending" if job.request == "cancel" else f"it is {job.status}"
        raise ApiError(400, f"job {job_id} cannot pause: {why}; only a queued or running job can pause",
                       param="job_id")  # fmt: skip
    return job_json(find_job(store, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(job_id: str, store: StoreDep, worker: WorkerDep):
    job = find_job(store, job_id)
    died = job.status == "failed" and (job.error or {}).get("code") in ("process_died", "interrupted")
    if died and not job_children(store, Checkpoint, job_id, None, 1):
        raise ApiError(400, f"job {job_id} failed before its first checkpoint: nothing to resume from; "
                       "create the job again", param="job_id")  # fmt: skip
    # a paused job; or one whose process kept dying (the limit of interruptions): it gets the limit again
    said = ["Job resumed: it continues from its last checkpoint"]
    revived = died and store.transition(job_id, ("failed",), status="queued", request=None, error=None,
                                        finished_at=None, interruptions=0, restarts=0, events=said)  # fmt: skip
    if not revived and not store.transition(job_id, ("paused",), status="queued", request=None, events=said):
        job = find_job(store, job_id)
        raise ApiError(400, f"job {job_id} is {job.status}, not paused (nor failed with checkpoints after its "
                       "process died)", param="job_id")  # fmt: skip
    worker.wake()
    return job_json(find_job(store, job_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def list_events(job_id: str, store: StoreDep, after: str | None = None, limit: int = 20):
    limit = check_limit(limit)
    find_job(store, job_id)
    return page([_event_json(e) for e in job_children(store, Event, job_id, after, limit)], limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(job_id: str, store: StoreDep, after: str | None = None, limit: int = 10):
    limit = check_limit(limit)
    find_job(store, job_id)
    return page([_checkpoint_json(c) for c in job_children(store, Checkpoint, job_id, after, limit)], limit)


def _method(body: JobCreate) -> tuple[str, dict, dict]:
    """The job's method type, its hyperparameters (checked; "auto" kept) and the TrainSpec keys the method sets."""
    method = body.method or {"type": "supervised"}
    if not isinstance(method, dict):
        raise ApiError(400, "method: an object with a type", param="method")
    kind = method.get("type", "supervised")
    if kind in UNSUPPORTED:
        raise ApiError(400, f"{UNSUPPORTED[kind]} fine-tuning is not available in lmtailor yet; use "
                       "method type 'supervised' or 'dpo'", param="method.type", code="unsupported_method")  # fmt: skip
    if kind not in ("supervised", "dpo", "reinforcement"):
        raise ApiError(400, f"unknown method type {kind!r}", param="method.type")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise ApiError(400, f"method.{kind}: an object with hyperparameters", param=f"method.{kind}")
    raw = section.get("hyperparameters") or body.hyperparameters or {}
    if not isinstance(raw, dict):
        raise ApiError(400, "hyperparameters: an object", param="hyperparameters")
    if kind != "dpo" and "beta" in raw:
        raise ApiError(400, "hyperparameters.beta is for method dpo", param="hyperparameters.beta")
    options = _reinforcement(section, raw) if kind == "reinforcement" else {}
    try:
        hp = Hyperparameters(**{k: v for k, v in raw.items() if k not in RL_HYPERPARAMETERS}).checked()
    except ValidationError as e:
        raise invalid(e, "hyperparameters", param="hyperparameters") from e
    if kind == "dpo":
        options = {"method": "dpo"}
    else:
        hp.pop("beta", None)
    if kind == "reinforcement":
        hp.update(
            {k: v for k, v in (section.get("hyperparameters") or {}).items() if k in RL_HYPERPARAMETERS}
        )
    return kind, hp, options


def _reinforcement(section: dict, hp: dict) -> dict:
    """TrainSpec keys of OpenAI's reinforcement method: its grader (checked now) and hyperparameters."""
    from lmtailor.graders.core import check

    grader = section.get("grader")
    if why := check(grader, "method.reinforcement.grader", server=True):
        raise ApiError(400, why, param=why.split(":", 1)[0])
    out: dict = {"method": "reinforcement", "grader": grader}
    for key, target in (("eval_interval", "eval_steps"), ("eval_samples", "eval_samples")):
        value = hp.get(key, "auto")
        if value != "auto":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ApiError(400, f"{key} must be 'auto' or a whole number of at least 1",
                               param=f"hyperparameters.{key}")  # fmt: skip
            out[target] = value
    multiplier = hp.get("compute_multiplier", "auto")
    if multiplier != "auto":
        if not isinstance(multiplier, int | float) or multiplier <= 0:
            raise ApiError(
                400,
                "compute_multiplier must be 'auto' or above 0",
                param="hyperparameters.compute_multiplier",
            )
        out["num_generations"] = max(2, round(4 * multiplier))
    return out


def _mixture(store: Store, training_file: str, extra: dict) -> dict:
    """`lmtailor.more_training_files` (each {"file": id, "weight": w} or an id) and `lmtailor.training_file_weight`,
    taken out of `extra`: more uploaded files mixed into the run (TrainSpec.data as a list), each checked as the
    training file is, and their weights as the CLI's `--data FILE:WEIGHT` are. Empty when none are given."""
    from lmtailor.specs import parse_sources

    more, weight = extra.pop("more_training_files", None), extra.pop("training_file_weight", None)
    param = "lmtailor.more_training_files"
    if more is None:
        if weight is not None:
            raise ApiError(400, "lmtailor.training_file_weight: a weight is for mixing with more_training_files",
                           param="lmtailor.training_file_weight")  # fmt: skip
        return {}
    if not isinstance(more, list) or not more:
        raise ApiError(
            400, f'{param}: a list of {{"file": "file-…", "weight": 0.3}} (weight optional)', param=param
        )
    items = []
    for i, item in enumerate(more):
        where = f"{param}[{i}]"
        item = {"file": item} if isinstance(item, str) else item
        if (
            not isinstance(item, dict)
            or set(item) - {"file", "weight"}
            or not isinstance(item.get("file"), str)
        ):
            raise ApiError(
                400, f'{where}: {{"file": "file-…", "weight": 0.3}} (weight optional)', param=where
            )
        f = store.get(StoredFile, item["file"])
        if f is None or f.deleted:
            raise ApiError(400, f"{where}.file: no such File object: {item['file']}", param=f"{where}.file",
                           code="file_not_found")  # fmt: skip
        if f.purpose != "fine-tune":
            raise ApiError(400, f"{where}.file: {f.id} has purpose {f.purpose!r}, not 'fine-tune'",
                           param=f"{where}.file")  # fmt: skip
        items.append({"file": f.id, "weight": item.get("weight")})
    try:  # file ids stand for the paths: the same checks as --data (weights, a file twice)
        parse_sources(
            [{"path": training_file, "weight": weight}]
            + [{"path": m["file"], "weight": m["weight"]} for m in items]
        )
    except ValueError as e:
        raise ApiError(400, f"{param}: {e}", param=param) from e
    return {"more_training_files": items, "training_file_weight": weight}


def _options(extra: dict, method_options: dict) -> dict:
    """lmtailor's own TrainSpec keys, checked now, with the method's (an option the method cannot use is refused
    by the spec), so a typo is a 400 naming it, not a failed job later."""
    from lmtailor.specs import TrainSpec

    reserved = {"model", "data", "val_data", "output", "resume", "keep_checkpoints", "name"}
    bad = sorted(set(extra) & reserved)
    if bad:
        raise ApiError(400, f"lmtailor.{bad[0]} is set by the job itself", param=f"lmtailor.{bad[0]}")
    # a job trains on this server's devices; several machines take `lmtailor train --nodes` on each of them,
    # and a config file is a path on the server, not the client's to pick
    local = sorted(set(extra) & {"nodes", "node_rank", "master_addr", "master_port", "accelerate_config"})
    if local:
        raise ApiError(400, f"lmtailor.{local[0]}: jobs run on this server's devices (lmtailor.devices); "
                            "several machines: `lmtailor train --nodes` on each (docs/scaling.md)",
                       param=f"lmtailor.{local[0]}")  # fmt: skip
    try:
        spec = TrainSpec(**{"model": "x", "data": "x", **extra, **method_options})
    except ValidationError as e:
        raise invalid(e, "lmtailor") from e
    if spec.devices > 1:  # a 400 now rather than a job that fails when it starts
        from lmtailor.train.launch import gpu_shortfall, visible_gpus

        problem = gpu_shortfall(spec.devices, visible_gpus(), option="lmtailor.devices")
        if problem:
            raise ApiError(400, problem, param="lmtailor.devices")
    return extra


def _event_json(e: Event) -> dict:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": e.created_at, "level": e.level,
            "message": e.message, "data": e.data, "type": e.type}  # fmt: skip


def _checkpoint_json(c: Checkpoint) -> dict:
    metrics = {k: v for k, v in (c.metrics or {}).items() if v is not None}
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.model, "fine_tuning_job_id": c.job_id, "metrics": metrics,
            "step_number": c.step}  # fmt: skip
