"""lmtailor's own jobs at /v1/lmtailor/jobs, on the same store and worker as fine-tuning: evaluation, merge and
synth jobs (create), and every job, fine-tuning included (list, retrieve with its result)."""

from __future__ import annotations

import json

from fastapi import APIRouter
from pydantic import ValidationError
from sqlalchemy import select

from lmtailor.errors import ModelError
from lmtailor.platform.store import Job, Store, new_id, now
from lmtailor.serve.pool import ModelPool
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
    job_json,
    ordered_after,
    page,
    queue_job,
)

# The key eval jobs created over the API send to `openai:` endpoints: whoever may create jobs may send it to
# any URL, so the server's operator sets it on purpose, apart from OPENAI_API_KEY.
ENDPOINT_KEY_ENV = "LMTAILOR_ENDPOINT_API_KEY"
NAMES = "_names"  # an eval job's options: the folder each asked-for model name loads -> that name

router = APIRouter()


@router.post("/v1/lmtailor/jobs")
async def create_lmtailor_job(body: dict, store: StoreDep, pool: PoolDep, worker: WorkerDep):
    kind = body.get("type")
    creators = {"eval": _create_eval, "merge": _create_merge, "synth": _create_synth, "tune": _create_tune}
    create = creators.get(kind) if isinstance(kind, str) else None
    if create is None:
        raise ApiError(400, f"job type {kind!r}: lmtailor runs 'eval', 'merge', 'synth' and 'tune' jobs here",
                       param="type", code="unsupported_job_type")  # fmt: skip
    return queue_job(store, worker, *create(body, store, pool))


@router.get("/v1/lmtailor/jobs")
async def list_all_jobs(store: StoreDep, after: str | None = None, limit: int = 20, kind: str | None = None):
    """Every job, fine-tuning and evaluation alike, newest first (`lmtailor.kind` tells them apart)."""
    limit = check_limit(limit)
    with store.session() as s:
        q = select(Job) if kind is None else select(Job).where(Job.kind == kind)
        rows = list(s.scalars(ordered_after(s, q, Job, after, "desc").limit(limit + 1)))
    return page([job_json(j) for j in rows], limit)


@router.get("/v1/lmtailor/jobs/{job_id}")
async def get_lmtailor_job(job_id: str, store: StoreDep):
    from lmtailor.platform.runjob import job_dir, public_report

    job = find_job(store, job_id)
    data = job_json(job)
    metrics = job_dir(store, job) / "eval" / "metrics.json"
    if job.kind == "eval" and metrics.exists():
        data["result"] = result = json.loads(metrics.read_text(encoding="utf-8"))
        names = (job.options or {}).get(NAMES) or {}
        for m in result.get("models", []):  # the names the client asked with, not the folders they load
            m["name"] = names.get(m["name"], m["name"])
    report = job_dir(store, job) / "synth" / "train.report.json"  # where runjob._synth writes it
    if job.kind == "synth" and report.exists():
        data["result"] = public_report(json.loads(report.read_text(encoding="utf-8")), job.model,
                                       job.result_files or [])  # fmt: skip
    record = job_dir(store, job) / "tune" / "tune.json"  # where tune/search.py writes it
    if job.kind == "tune" and record.exists():  # the search's record, without the server's paths
        home = str(
            store.home
        )  # messages inside may name a file of the home (a base's folder): relative to it
        result = json.loads(record.read_text(encoding="utf-8").replace(home + "/", "").replace(home, ""))
        data["result"] = {
            **{k: v for k, v in result.items() if k not in ("data", "model")},
            "model": job.model,
        }
    return data


def _create_eval(body: dict, store: Store, pool: ModelPool) -> tuple[Job, str]:
    """An evaluation job: `spec` holds EvalSpec keys, its data an uploaded file, its models as this server
    offers them or `openai:` endpoints (sent $LMTAILOR_ENDPOINT_API_KEY)."""
    from lmtailor.evaluate.spec import EvalSpec

    raw = body.get("spec")
    if not isinstance(raw, dict):
        raise ApiError(400, "spec: an object with models, data and the eval options", param="spec")
    raw = dict(raw)
    # over the API a job reads only uploaded files, runs no model code, and names no environment variable
    if not (isinstance(raw.get("data"), str) and raw["data"].startswith("file-")):
        raise ApiError(400, "spec.data: the id of a file uploaded to /v1/files (file-…)", param="spec.data")
    raw["data"] = str(store.path(find_file(store, raw["data"], "spec.data").path))
    for key in ("api_key_env", "trust_remote_code", "output"):
        if key in raw:
            raise ApiError(400, f"spec.{key} is set by the server, not per job", param=f"spec.{key}")
    raw["api_key_env"] = ENDPOINT_KEY_ENV
    models = raw.get("models")
    if not isinstance(models, list):
        raise ApiError(400, "spec.models: a list of model names", param="spec.models")
    raw["models"] = [_loadable(pool, m, f"spec.models[{i}]") for i, m in enumerate(models)]
    names = {ref: name for ref, name in zip(raw["models"], models, strict=True) if ref != name}
    if raw.get("judge_model") is not None:
        raw["judge_model"] = _loadable(pool, raw["judge_model"], "spec.judge_model")
    try:
        spec = EvalSpec(**raw)
    except ValidationError as e:
        raise invalid(e, "spec", param="spec") from e
    job = Job(id=new_id("evaljob"), kind="eval", status="queued", model=spec.models[-1],
              options={**spec.model_dump(exclude={"output"}), NAMES: names}, created_at=now(), result_files=[],
              job_metadata=body.get("metadata"))  # fmt: skip
    return job, f"Created evaluation job: {job.id}"


def _create_merge(body: dict, store: Store, pool: ModelPool) -> tuple[Job, str]:
    """A merge job: `spec` holds MergeSpec keys, the models named as this server offers them; the merged
    model is served as `merged:<suffix or method>:<job id>` when the job ends."""
    from lmtailor.specs import MergeSpec

    raw = _job_spec(body, "models, method and the merge options", ("output", "name", "trust_remote_code"))
    models = raw.get("models")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ApiError(400, "spec.models: a list of model names", param="spec.models")
    raw["models"] = [find_model(pool, m, f"spec.models[{i}]").ref for i, m in enumerate(models)]
    if isinstance(raw.get("base"), str):
        raw["base"] = find_model(pool, raw["base"], "spec.base").ref
    spec = _validated(MergeSpec, raw)
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and 0 < len(suffix) <= 64 and ":" not in suffix):
        raise ApiError(400, "suffix: up to 64 characters, no ':'", param="suffix")
    names = {ref: name for ref, name in zip(raw["models"], models, strict=True) if ref != name}
    job = Job(id=new_id("mergejob"), kind="merge", status="queued", model=models[0], suffix=suffix,
              options={**spec.model_dump(exclude={"output", "name"}), NAMES: names},
              created_at=now(), result_files=[], job_metadata=body.get("metadata"))  # fmt: skip
    return job, f"Created merge job: {job.id}"


def _create_synth(body: dict, store: Store, pool: ModelPool) -> tuple[Job, str]:
    """A synth job: `spec` holds SynthSpec keys, `docs` the ids of uploaded documents, `generator` a model this
    server offers or an `openai:` endpoint (sent $LMTAILOR_ENDPOINT_API_KEY). The job's result files are the
    training set (purpose fine-tune), the held-out paraphrases (evals) and the report (user_data)."""
    from lmtailor.specs import SynthSpec

    raw = _job_spec(
        body, "docs, generator and the synth options", ("output", "api_key_env", "trust_remote_code")
    )
    names, raw["docs"] = _documents(store, raw.get("docs"))
    generator = raw.get("generator")
    if not isinstance(generator, str):
        raise ApiError(400, "spec.generator: a model name or openai:MODEL@BASE_URL", param="spec.generator")
    raw["generator"] = _loadable(pool, generator, "spec.generator")
    names[raw["generator"]] = generator
    if raw.get("tokenizer") is not None:  # a model this server offers, like the generator
        if not isinstance(raw["tokenizer"], str):
            raise ApiError(400, "spec.tokenizer: a model name", param="spec.tokenizer")
        raw["tokenizer"] = find_model(pool, raw["tokenizer"], "spec.tokenizer").ref
    raw["api_key_env"] = ENDPOINT_KEY_ENV
    spec = _validated(SynthSpec, raw)
    job = Job(id=new_id("synthjob"), kind="synth", status="queued", model=generator,
              options={**spec.model_dump(exclude={"output"}), NAMES: names}, created_at=now(),
              result_files=[], job_metadata=body.get("metadata"))  # fmt: skip
    return job, f"Created synth job: {job.id} ({len(raw['docs'])} documents)"


def _create_tune(body: dict, store: Store, pool: ModelPool) -> tuple[Job, str]:
    """A search job (`lmtailor tune`): `spec` holds TuneSpec keys, `data` (and `val_data`) the ids of uploaded
    files, `model` a model this server offers. Each trial is an event; the best model so far is served as
    `ft:<model>:<suffix or lmtailor>:<job id>`, the search's record is the job's `result`."""
    from lmtailor.specs import TuneSpec

    raw = _job_spec(body, "data, model and the search options", ("output", "trust_remote_code", "format"))
    for key in ("data", "val_data"):
        value = raw.get(key)
        if value is None and key == "val_data":
            continue
        if not (isinstance(value, str) and value.startswith("file-")):
            raise ApiError(
                400, f"spec.{key}: the id of a file uploaded to /v1/files (file-…)", param=f"spec.{key}"
            )
        raw[key] = str(store.path(find_file(store, value, f"spec.{key}").path))
    model = raw.get("model", TuneSpec.model_fields["model"].default)
    raw["model"] = find_model(pool, model, "spec.model").ref
    spec = _validated(TuneSpec, {**raw, "output": "-"})  # the job's folder is the server's: runjob._tune
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and 0 < len(suffix) <= 64 and ":" not in suffix):
        raise ApiError(400, "suffix: up to 64 characters, no ':'", param="suffix")
    job = Job(id=new_id("tunejob"), kind="tune", status="queued", model=model, suffix=suffix,
              options=spec.model_dump(exclude={"output"}), created_at=now(), result_files=[],
              job_metadata=body.get("metadata"))  # fmt: skip
    return job, f"Created search job: {job.id}"


def _documents(store: Store, docs) -> tuple[dict[str, str], list[str]]:
    """A synth job's `spec.docs`: the uploaded documents' names by their stored file's name, and their paths."""
    from lmtailor.data.documents import SUFFIXES

    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise ApiError(400, "spec.docs: a list of ids of uploaded documents (file-…)", param="spec.docs")
    names: dict[str, str] = {}
    paths = []
    for i, file_id in enumerate(docs):
        f = find_file(store, file_id, f"spec.docs[{i}]")
        path = store.path(f.path)
        if path.suffix not in SUFFIXES:
            raise ApiError(400, f"spec.docs[{i}]: {f.filename} is not a document ({', '.join(SUFFIXES)})",
                           param=f"spec.docs[{i}]")  # fmt: skip
        names[path.name] = f.filename
        paths.append(str(path))
    return names, paths


def _loadable(pool: ModelPool, name, param: str) -> str:
    """A model name as the job process can load it: an `openai:` endpoint as given, a name this server offers
    (tuned folders, ft: models) as the folder or reference it loads."""
    from lmtailor.models.endpoint import parse_endpoint

    if not isinstance(name, str):
        raise ApiError(400, f"{param}: a model name", param=param)
    try:
        return name if parse_endpoint(name) else find_model(pool, name, param).ref
    except ModelError as e:
        raise ApiError(400, f"{param}: {e}", param=param) from e


def _job_spec(body: dict, holds: str, servers: tuple[str, ...]) -> dict:
    """The `spec` object of an lmtailor job, without the keys the server sets (refused, each by name)."""
    raw = body.get("spec")
    if not isinstance(raw, dict):
        raise ApiError(400, f"spec: an object with {holds}", param="spec")
    for key in servers:
        if key in raw:
            raise ApiError(400, f"spec.{key} is set by the server, not per job", param=f"spec.{key}")
    return dict(raw)


def _validated(cls, raw: dict):
    """A spec from the keys of the request's `spec`; the first invalid one as a 400 naming it."""
    try:
        return cls(**raw)
    except ValidationError as e:
        raise invalid(e, "spec") from e
