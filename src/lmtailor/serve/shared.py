"""What the API's routers share: the app's parts as FastAPI dependencies and the API key check, errors in
OpenAI's shape (a failed validation, a model this server does not offer), list pages, and File and job rows.

create_app (serve/app.py) puts a `Parts` on `app.state.parts`; a route names what it needs (`store: StoreDep`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select

from lmtailor.platform.store import File as StoredFile
from lmtailor.platform.store import Job, Store, new_event
from lmtailor.serve.pool import ModelNotFound, ModelPool
from lmtailor.serve.protocol import ApiError

if TYPE_CHECKING:
    from lmtailor.serve.metrics import Metrics

# ---- the app's parts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """What the routes work on, made once by create_app."""

    pool: ModelPool
    metrics: Metrics
    store: Store | None  # None: a server of models only, without the files and jobs API
    worker: Any  # runs the store's queued jobs (platform/worker.py)
    api_key: str | None  # None: no key asked (a loopback bind; serve/run.py refuses any other without one)
    timeout: float  # seconds a generation may take
    max_upload: int  # bytes of an uploaded file (POST /v1/files)


def parts(request: Request) -> Parts:
    return request.app.state.parts


def _pool(request: Request) -> ModelPool:
    return parts(request).pool


def _store(request: Request) -> Store:
    return parts(request).store


def _worker(request: Request):
    return parts(request).worker


PartsDep = Annotated[Parts, Depends(parts)]
PoolDep = Annotated[ModelPool, Depends(_pool)]
StoreDep = Annotated[Store, Depends(_store)]
WorkerDep = Annotated[Any, Depends(_worker)]


def authorize(request: Request) -> None:
    """The API key, when the server has one: `Authorization: Bearer <key>`, compared in constant time."""
    api_key = parts(request).api_key
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                       code="invalid_api_key")  # fmt: skip


GUARD = [Depends(authorize)]  # every router's routes but /health and the console's page

# ---- errors -----------------------------------------------------------------------------------------------------


def invalid(e: ValidationError | RequestValidationError, field: str | None = None,
            param: str | None = None) -> ApiError:  # fmt: skip
    """A validation's first error as OpenAI's 400: "<field>.<where>: <why>", its param the same path, or
    `param` where the caller names only the object (the eval spec, the hyperparameters)."""
    err = e.errors()[0]
    if err.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON")
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]  # a body's fields by their own names
    where = ".".join([field, *loc] if field else loc) or None
    msg = err.get("msg", "invalid request")
    if isinstance(e, RequestValidationError):  # a request's own fields: the message without pydantic's prefix
        msg = msg.removeprefix("Value error, ")
    return ApiError(400, f"{where}: {msg}" if where else msg, param=param or where)


def find_model(pool: ModelPool, model_id: str, param: str = "model"):
    """A model this server offers (catalog, tuned folder, or an earlier job's), or a 404 naming `param`."""
    try:
        return pool.find(model_id)
    except ModelNotFound as e:
        raise ApiError(404, str(e), param=param, code="model_not_found") from e


# ---- list pages -------------------------------------------------------------------------------------------------


def check_limit(limit: int, most: int = 10000) -> int:
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit must be between 1 and {most}, not {limit}", param="limit")
    return limit


def page(items: list[dict], limit: int) -> dict:
    """A list response: up to `limit` items (one more was fetched to tell has_more)."""
    shown = items[:limit]
    return {"object": "list", "data": shown, "has_more": len(items) > limit,
            "first_id": shown[0]["id"] if shown else None, "last_id": shown[-1]["id"] if shown else None}  # fmt: skip


def ordered_after(session, query, cls, after: str | None, order: str):
    """`query` over rows of `cls` in creation order (or its reverse), from past the row with id `after`."""
    query = query.order_by(cls.seq.desc() if order == "desc" else cls.seq)
    if after:
        mark = session.scalar(select(cls.seq).where(cls.id == after))
        if mark is not None:
            query = query.where(cls.seq < mark if order == "desc" else cls.seq > mark)
    return query


def job_children(store: Store, cls, job_id: str, after: str | None, limit: int) -> list:
    """A job's events or checkpoints, newest first, older than the one with id `after`; one extra for has_more."""
    with store.session() as s:
        q = select(cls).where(cls.job_id == job_id).order_by(cls.seq.desc())
        if after:
            mark = s.scalar(select(cls.seq).where(cls.id == after))
            q = q.where(cls.seq < (mark if mark is not None else 0))
        return list(s.scalars(q.limit(max(1, limit) + 1)))


# ---- rows -------------------------------------------------------------------------------------------------------


def find_file(store: Store, file_id: str, param: str = "file_id") -> StoredFile:
    f = store.get(StoredFile, file_id)
    if f is None or f.deleted:
        raise ApiError(404, f"No such File object: {file_id}", param=param, code="file_not_found")
    return f


def file_json(f: StoredFile) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None}  # fmt: skip


def find_job(store: Store, job_id: str) -> Job:
    job = store.get(Job, job_id)
    if job is None:
        raise ApiError(404, f"No such job: {job_id}", param="job_id", code="job_not_found")
    return job


def queue_job(store: Store, worker, job: Job, said: str) -> dict:
    """A new job queued: its row, its first event, the worker woken; the job as the API shows it."""
    job = store.add_job(job, [new_event(job.id, said)])  # the row and its first event together
    worker.wake()
    return job_json(job)


def more_file_ids(job: Job) -> list[str]:
    """The ids of the files a job mixes in beside its training file (lmtailor.more_training_files)."""
    return [m["file"] for m in (job.options or {}).get("more_training_files") or []]


def job_json(job: Job) -> dict:
    hp = dict(job.hyperparameters or {})
    if job.chosen:  # what "auto" became
        chosen = {"n_epochs": job.chosen.get("epochs"), "batch_size": job.chosen.get("batch_size")}
        hp.update({k: v for k, v in chosen.items() if v is not None})
    return {
        "id": job.id, "object": "fine_tuning.job", "created_at": job.created_at, "error": job.error,
        "fine_tuned_model": job.fine_tuned_model, "finished_at": job.finished_at, "hyperparameters": hp,
        "model": job.model, "organization_id": "lmtailor", "result_files": job.result_files or [],
        "seed": job.seed, "status": job.status, "trained_tokens": job.trained_tokens,
        "training_file": job.training_file, "validation_file": job.validation_file, "integrations": [],
        "estimated_finish": None, "metadata": job.job_metadata, "method": job.method or None,
        "user_provided_suffix": job.suffix, "lmtailor": {"kind": job.kind, "options": job.options,
                                                         "chosen": job.chosen, "attempts": job.attempts,
                                                         "interruptions": job.interruptions,
                                                         "restarts": job.restarts},
    }  # fmt: skip
