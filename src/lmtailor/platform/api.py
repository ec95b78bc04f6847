"""OpenAI's files and fine-tuning jobs API on lmtailor: code written for OpenAI works with `base_url` changed.

/v1/files                                   upload (multipart), list, retrieve, content, delete
/v1/fine_tuning/jobs                        create, list, retrieve, cancel, pause, resume, events, checkpoints
/v1/lmtailor/jobs                           lmtailor's own jobs (evaluation) on the same store and worker
"""

from __future__ import annotations

import os
from typing import Any, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from lmtailor.errors import ModelError
from lmtailor.platform.store import Checkpoint, Event, Job, Store, new_id, now
from lmtailor.platform.store import File as StoredFile
from lmtailor.serve.protocol import ApiError

# suffixes an upload keeps: data files; documents for synth jobs (data/documents.SUFFIXES) except as training
# or eval data, where a train.txt is JSONL under another name, as OpenAI takes it
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "vision", "user_data", "evals")
# The key eval jobs created over the API send to `openai:` endpoints: whoever may create jobs may send it to
# any URL, so the server's operator sets it on purpose, apart from OPENAI_API_KEY.
ENDPOINT_KEY_ENV = "LMTAILOR_ENDPOINT_API_KEY"
NAMES = "_names"  # an eval job's options: the folder each asked-for model name loads -> that name
UNSUPPORTED: dict[str, str] = {}
RL_HYPERPARAMETERS = ("eval_interval", "eval_samples", "compute_multiplier", "reasoning_effort")


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
    seed: int | None = None
    metadata: dict[str, str] | None = None
    lmtailor: dict[str, Any] | None = None  # lmtailor's own TrainSpec keys (strategy, lora_r, …)


def add_platform_routes(app: FastAPI, store: Store, worker, pool, guard: list, max_upload: int) -> None:
    # ---- files --------------------------------------------------------------------------------------------

    @app.post("/v1/files", dependencies=guard)
    async def upload(file: UploadFile = File(...), purpose: str = Form(...)):
        if purpose not in PURPOSES:
            raise ApiError(400, f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        file_id = new_id("file")
        name = os.path.basename(file.filename or "upload.jsonl")
        suffix = os.path.splitext(name)[1].lower()  # the readers go by it; OpenAI's files are JSONL
        kept = suffix in DATA_SUFFIXES or (
            suffix in DOC_SUFFIXES and purpose not in ("fine-tune", "evals", "batch")
        )
        rel = f"files/{file_id}{suffix if kept else '.jsonl'}"
        target = store.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{file_id}.part")
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > max_upload:
                        raise ApiError(413, f"the file is over the upload limit of {max_upload} bytes",
                                       param="file", code="file_too_large")  # fmt: skip
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)  # a crash mid-upload leaves only a .part file, never a half file
        finally:
            tmp.unlink(missing_ok=True)
        return _file_json(store.add_file(file_id, rel, name, purpose))

    @app.get("/v1/files", dependencies=guard)
    async def list_files(purpose: str | None = None, limit: int = 10000, after: str | None = None,
                         order: Literal["asc", "desc"] = "desc"):  # fmt: skip
        limit = _limit(limit)
        with store.session() as s:
            q = select(StoredFile).where(StoredFile.deleted.is_(False))
            if purpose:
                q = q.where(StoredFile.purpose == purpose)
            q = _after(s, q, StoredFile, after, order)
            rows = list(s.scalars(q.limit(max(1, min(limit, 10000)) + 1)))
        return _page([_file_json(f) for f in rows], limit)

    @app.get("/v1/files/{file_id}", dependencies=guard)
    async def get_file(file_id: str):
        return _file_json(_file(store, file_id))

    @app.get("/v1/files/{file_id}/content", dependencies=guard)
    async def file_content(file_id: str):
        f = _file(store, file_id)
        return FileResponse(store.path(f.path), filename=f.filename, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", dependencies=guard)
    async def delete_file(file_id: str):
        f = _file(store, file_id)
        busy = [j.id for j in store.jobs(("validating_files", "queued", "running", "paused"))
                if file_id in (j.training_file, j.validation_file, *more_file_ids(j))]  # fmt: skip
        if busy:
            raise ApiError(
                409, f"{file_id} is used by unfinished job {busy[0]}; cancel it first", param="file_id"
            )
        store.path(f.path).unlink(missing_ok=True)
        with store.session() as s, s.begin():
            s.get(StoredFile, file_id).deleted = True
        return {"id": file_id, "object": "file", "deleted": True}

    # ---- fine-tuning jobs -----------------------------------------------------------------------------

    @app.post("/v1/fine_tuning/jobs", dependencies=guard)
    async def create_job(body: JobCreate):
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
        rl_options = _reinforcement(section, raw) if kind == "reinforcement" else {}
        raw = {k: v for k, v in raw.items() if k not in RL_HYPERPARAMETERS}
        try:
            hp = Hyperparameters(**raw).checked()
        except ValidationError as e:
            err = e.errors()[0]
            raise ApiError(400, f"hyperparameters.{'.'.join(map(str, err['loc']))}: {err['msg']}",
                           param="hyperparameters") from e  # fmt: skip
        base_ref = _offered(pool, body.model)
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id:
                f = _file(store, file_id, param)
                if f.purpose != "fine-tune":
                    raise ApiError(400, f"{file_id} has purpose {f.purpose!r}, not 'fine-tune'", param=param)
        extra = dict(body.lmtailor or {})
        mixture = _mixture(store, body.training_file, extra)  # lmtailor.more_training_files, checked now
        if mixture and kind != "supervised":
            raise ApiError(400, f"lmtailor.more_training_files: several training files are mixed for method "
                           f"supervised only, not {kind}", param="lmtailor.more_training_files")  # fmt: skip
        options = {**_options(extra), **mixture}
        if kind == "dpo":
            options = {**options, "method": "dpo"}
        else:
            hp.pop("beta", None)
        if kind == "reinforcement":
            options = {**options, **rl_options}
            hp.update(
                {k: v for k, v in (section.get("hyperparameters") or {}).items() if k in RL_HYPERPARAMETERS}
            )
        job = store.add(Job(id=new_id("ftjob"), kind="fine_tune", status="queued", model=body.model, base_ref=base_ref,
                            training_file=body.training_file, validation_file=body.validation_file,
                            method={"type": kind, kind: {"hyperparameters": hp}},
                            hyperparameters=hp, options=options, suffix=body.suffix,
                            seed=body.seed if body.seed is not None else 42, job_metadata=body.metadata,
                            created_at=now(), result_files=[]))  # fmt: skip
        store.log(job.id, f"Created fine-tuning job: {job.id}")
        worker.wake()
        return _job_json(store, job)

    @app.get("/v1/fine_tuning/jobs", dependencies=guard)
    async def list_jobs(request: Request, after: str | None = None, limit: int = 20):
        limit = _limit(limit)
        wanted = {
            k[9:-1]: v
            for k, v in request.query_params.items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        with store.session() as s:
            q = _after(s, select(Job).where(Job.kind == "fine_tune"), Job, after, "desc")
            rows = [
                j for j in s.scalars(q) if all((j.job_metadata or {}).get(k) == v for k, v in wanted.items())
            ]
        return _page([_job_json(store, j) for j in rows[: limit + 1]], limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}", dependencies=guard)
    async def get_job(job_id: str):
        return _job_json(store, _job(store, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", dependencies=guard)
    async def cancel_job(job_id: str):
        _job(store, job_id)
        # each change holds only if the job is still where we saw it: the worker may claim it meanwhile
        if store.transition(job_id, ("queued", "paused"), status="cancelled", finished_at=now(), request=None,
                            events=["Job cancelled"]):  # fmt: skip
            return _job_json(store, _job(store, job_id))
        if not store.ask(job_id, "cancel"):
            raise ApiError(400, f"job {job_id} already {_job(store, job_id).status}", param="job_id")
        worker.wake()
        return _job_json(store, _job(store, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause", dependencies=guard)
    async def pause_job(job_id: str):
        _job(store, job_id)
        if store.transition(job_id, ("queued",), status="paused", events=["Job paused before it started"]):
            return _job_json(store, _job(store, job_id))
        if store.ask(job_id, "pause"):
            store.log(job_id, "Pause requested: the job stops at its next step, after a checkpoint")
        else:
            job = _job(store, job_id)
            why = "a cancel is pending" if job.request == "cancel" else f"it is {job.status}"
            raise ApiError(400, f"job {job_id} cannot pause: {why}; only a queued or running job can pause",
                           param="job_id")  # fmt: skip
        return _job_json(store, _job(store, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume", dependencies=guard)
    async def resume_job(job_id: str):
        job = _job(store, job_id)
        died = job.status == "failed" and (job.error or {}).get("code") in ("process_died", "interrupted")
        if died and not _children(store, Checkpoint, job_id, None, 1):
            raise ApiError(400, f"job {job_id} failed before its first checkpoint: nothing to resume from; "
                           "create the job again", param="job_id")  # fmt: skip
        # a paused job; or one whose process kept dying (the limit of interruptions): it gets the limit again
        said = ["Job resumed: it continues from its last checkpoint"]
        revived = died and store.transition(job_id, ("failed",), status="queued", request=None, error=None,
                                            finished_at=None, interruptions=0, restarts=0, events=said)  # fmt: skip
        if not revived and not store.transition(
            job_id, ("paused",), status="queued", request=None, events=said
        ):
            job = _job(store, job_id)
            raise ApiError(400, f"job {job_id} is {job.status}, not paused (nor failed with checkpoints after its "
                           "process died)", param="job_id")  # fmt: skip
        worker.wake()
        return _job_json(store, _job(store, job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", dependencies=guard)
    async def list_events(job_id: str, after: str | None = None, limit: int = 20):
        limit = _limit(limit)
        _job(store, job_id)
        return _page([_event_json(e) for e in _children(store, Event, job_id, after, limit)], limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", dependencies=guard)
    async def list_checkpoints(job_id: str, after: str | None = None, limit: int = 10):
        limit = _limit(limit)
        _job(store, job_id)
        return _page([_checkpoint_json(c) for c in _children(store, Checkpoint, job_id, after, limit)], limit)

    # ---- lmtailor's own jobs: evaluation -----------------------------------------------------------------

    @app.post("/v1/lmtailor/jobs", dependencies=guard)
    async def create_lmtailor_job(body: dict):
        kind = body.get("type")
        if kind == "merge":
            return _create_merge(body)
        if kind == "synth":
            return _create_synth(body)
        if kind != "eval":
            raise ApiError(400, f"job type {kind!r}: lmtailor runs 'eval', 'merge' and 'synth' jobs here",
                           param="type", code="unsupported_job_type")  # fmt: skip
        from lmtailor.evaluate.runner import parse_endpoint
        from lmtailor.evaluate.spec import EvalSpec

        raw = body.get("spec")
        if not isinstance(raw, dict):
            raise ApiError(400, "spec: an object with models, data and the eval options", param="spec")
        raw = dict(raw)
        # over the API a job reads only uploaded files, runs no model code, and names no environment variable
        if not (isinstance(raw.get("data"), str) and raw["data"].startswith("file-")):
            raise ApiError(
                400, "spec.data: the id of a file uploaded to /v1/files (file-…)", param="spec.data"
            )
        raw["data"] = str(store.path(_file(store, raw["data"], "spec.data").path))
        for key in ("api_key_env", "trust_remote_code", "output"):
            if key in raw:
                raise ApiError(400, f"spec.{key} is set by the server, not per job", param=f"spec.{key}")
        raw["api_key_env"] = ENDPOINT_KEY_ENV

        def loadable(name, param: str) -> str:
            """The server's model names (tuned folders, ft: models) become what the job process can load."""
            if not isinstance(name, str):
                raise ApiError(400, f"{param}: a model name", param=param)
            try:
                return name if parse_endpoint(name) else _offered(pool, name, param)
            except ModelError as e:
                raise ApiError(400, f"{param}: {e}", param=param) from e

        models = raw.get("models")
        if not isinstance(models, list):
            raise ApiError(400, "spec.models: a list of model names", param="spec.models")
        raw["models"] = [loadable(m, f"spec.models[{i}]") for i, m in enumerate(models)]
        names = {ref: name for ref, name in zip(raw["models"], models, strict=True) if ref != name}
        if raw.get("judge_model") is not None:
            raw["judge_model"] = loadable(raw["judge_model"], "spec.judge_model")
        try:
            spec = EvalSpec(**raw)
        except ValidationError as e:
            err = e.errors()[0]
            raise ApiError(400, f"spec.{'.'.join(map(str, err['loc']))}: {err['msg']}", param="spec") from e
        job = store.add(Job(id=new_id("evaljob"), kind="eval", status="queued", model=spec.models[-1],
                            options={**spec.model_dump(exclude={"output"}), NAMES: names}, created_at=now(), result_files=[],
                            job_metadata=body.get("metadata")))  # fmt: skip
        store.log(job.id, f"Created evaluation job: {job.id}")
        worker.wake()
        return _job_json(store, job)

    def _create_merge(body: dict) -> dict:
        """A merge job: `spec` holds MergeSpec keys, the models named as this server offers them; the merged
        model is served as `merged:<suffix or method>:<job id>` when the job ends."""
        from lmtailor.specs import MergeSpec

        raw = _job_spec(body, "models, method and the merge options", ("output", "name", "trust_remote_code"))
        models = raw.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ApiError(400, "spec.models: a list of model names", param="spec.models")
        raw["models"] = [_offered(pool, m, f"spec.models[{i}]") for i, m in enumerate(models)]
        if isinstance(raw.get("base"), str):
            raw["base"] = _offered(pool, raw["base"], "spec.base")
        spec = _validated(MergeSpec, raw)
        suffix = body.get("suffix")
        if suffix is not None and not (
            isinstance(suffix, str) and 0 < len(suffix) <= 64 and ":" not in suffix
        ):
            raise ApiError(400, "suffix: up to 64 characters, no ':'", param="suffix")
        names = {ref: name for ref, name in zip(raw["models"], models, strict=True) if ref != name}
        job = store.add(Job(id=new_id("mergejob"), kind="merge", status="queued", model=models[0], suffix=suffix,
                            options={**spec.model_dump(exclude={"output", "name"}), NAMES: names},
                            created_at=now(), result_files=[], job_metadata=body.get("metadata")))  # fmt: skip
        store.log(job.id, f"Created merge job: {job.id}")
        worker.wake()
        return _job_json(store, job)

    def _create_synth(body: dict) -> dict:
        """A synth job: `spec` holds SynthSpec keys, `docs` the ids of uploaded documents, `generator` a model this
        server offers or an `openai:` endpoint (sent $LMTAILOR_ENDPOINT_API_KEY). The job's result files are the
        training set (purpose fine-tune), the held-out paraphrases (evals) and the report (user_data)."""
        from lmtailor.data.documents import SUFFIXES
        from lmtailor.evaluate.runner import parse_endpoint
        from lmtailor.specs import SynthSpec

        raw = _job_spec(
            body, "docs, generator and the synth options", ("output", "api_key_env", "trust_remote_code")
        )
        docs = raw.get("docs")
        if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
            raise ApiError(400, "spec.docs: a list of ids of uploaded documents (file-…)", param="spec.docs")
        names: dict[str, str] = {}
        paths = []
        for i, file_id in enumerate(docs):
            f = _file(store, file_id, f"spec.docs[{i}]")
            path = store.path(f.path)
            if path.suffix not in SUFFIXES:
                raise ApiError(400, f"spec.docs[{i}]: {f.filename} is not a document ({', '.join(SUFFIXES)})",
                               param=f"spec.docs[{i}]")  # fmt: skip
            names[path.name] = f.filename
            paths.append(str(path))
        raw["docs"] = paths
        generator = raw.get("generator")
        if not isinstance(generator, str):
            raise ApiError(
                400, "spec.generator: a model name or openai:MODEL@BASE_URL", param="spec.generator"
            )
        try:
            raw["generator"] = (
                generator if parse_endpoint(generator) else _offered(pool, generator, "spec.generator")
            )
        except ModelError as e:
            raise ApiError(400, f"spec.generator: {e}", param="spec.generator") from e
        names[raw["generator"]] = generator
        if raw.get("tokenizer") is not None:  # a model this server offers, like the generator
            if not isinstance(raw["tokenizer"], str):
                raise ApiError(400, "spec.tokenizer: a model name", param="spec.tokenizer")
            raw["tokenizer"] = _offered(pool, raw["tokenizer"], "spec.tokenizer")
        raw["api_key_env"] = ENDPOINT_KEY_ENV
        spec = _validated(SynthSpec, raw)
        job = store.add(Job(id=new_id("synthjob"), kind="synth", status="queued", model=generator,
                            options={**spec.model_dump(exclude={"output"}), NAMES: names}, created_at=now(),
                            result_files=[], job_metadata=body.get("metadata")))  # fmt: skip
        store.log(job.id, f"Created synth job: {job.id} ({len(paths)} documents)")
        worker.wake()
        return _job_json(store, job)

    @app.get("/v1/lmtailor/jobs", dependencies=guard)
    async def list_all_jobs(after: str | None = None, limit: int = 20, kind: str | None = None):
        """Every job, fine-tuning and evaluation alike, newest first (`lmtailor.kind` tells them apart)."""
        limit = _limit(limit)
        with store.session() as s:
            q = select(Job) if kind is None else select(Job).where(Job.kind == kind)
            rows = list(s.scalars(_after(s, q, Job, after, "desc").limit(limit + 1)))
        return _page([_job_json(store, j) for j in rows], limit)

    @app.get("/v1/lmtailor/jobs/{job_id}", dependencies=guard)
    async def get_lmtailor_job(job_id: str):
        job = _job(store, job_id)
        data = _job_json(store, job)
        import json

        from lmtailor.platform.runjob import job_dir, public_report

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
        return data


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


def _job_spec(body: dict, holds: str, servers: tuple[str, ...]) -> dict:
    """The `spec` object of an lmtailor job, without the keys the server sets (refused, each by name)."""
    raw = body.get("spec")
    if not isinstance(raw, dict):
        raise ApiError(400, f"spec: an object with {holds}", param="spec")
    for key in servers:
        if key in raw:
            raise ApiError(400, f"spec.{key} is set by the server, not per job", param=f"spec.{key}")
    return dict(raw)


def _validated(cls, raw: dict, field: str = "spec"):
    """A spec from the keys of the request's `field`; the first invalid one as a 400 naming it."""
    try:
        return cls(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        param = f"{field}.{where}" if where else field
        raise ApiError(400, f"{param}: {err['msg']}", param=param) from e


MIXTURE_KEYS = ("more_training_files", "training_file_weight")  # lmtailor's keys for several training files


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


def more_file_ids(job: Job) -> list[str]:
    """The ids of the files a job mixes in beside its training file (lmtailor.more_training_files)."""
    return [m["file"] for m in (job.options or {}).get("more_training_files") or []]


def _options(extra: dict) -> dict:
    """lmtailor's own TrainSpec keys, checked now so a typo is a 400 naming it, not a failed job later."""
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
    spec = _validated(TrainSpec, {"model": "x", "data": "x", **extra}, "lmtailor")
    if spec.devices > 1:  # a 400 now rather than a job that fails when it starts
        from lmtailor.train.launch import gpu_shortfall, visible_gpus

        problem = gpu_shortfall(spec.devices, visible_gpus(), option="lmtailor.devices")
        if problem:
            raise ApiError(400, problem, param="lmtailor.devices")
    return extra


def _offered(pool, model: str, param: str = "model") -> str:
    """What a job loads: a model this server offers (catalog, tuned folder, or an earlier job's)."""
    from lmtailor.serve.pool import ModelNotFound

    try:
        return pool.find(model).ref
    except ModelNotFound as e:
        raise ApiError(404, str(e), param=param, code="model_not_found") from e


def _children(store: Store, cls, job_id: str, after: str | None, limit: int) -> list:
    """A job's events or checkpoints, newest first, older than the one with id `after`; one extra for has_more."""
    with store.session() as s:
        q = select(cls).where(cls.job_id == job_id).order_by(cls.seq.desc())
        if after:
            mark = s.scalar(select(cls.seq).where(cls.id == after))
            q = q.where(cls.seq < (mark if mark is not None else 0))
        return list(s.scalars(q.limit(max(1, limit) + 1)))


def _after(session, query, cls, after: str | None, order: str):
    query = query.order_by(cls.seq.desc() if order == "desc" else cls.seq)
    if after:
        mark = session.scalar(select(cls.seq).where(cls.id == after))
        if mark is not None:
            query = query.where(cls.seq < mark if order == "desc" else cls.seq > mark)
    return query


def _limit(limit: int, most: int = 10000) -> int:
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit must be between 1 and {most}, not {limit}", param="limit")
    return limit


def _page(items: list[dict], limit: int) -> dict:
    page = items[:limit]
    return {"object": "list", "data": page, "has_more": len(items) > limit,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}  # fmt: skip


def _file(store: Store, file_id: str, param: str = "file_id") -> StoredFile:
    f = store.get(StoredFile, file_id)
    if f is None or f.deleted:
        raise ApiError(404, f"No such File object: {file_id}", param=param, code="file_not_found")
    return f


def _job(store: Store, job_id: str) -> Job:
    job = store.get(Job, job_id)
    if job is None:
        raise ApiError(404, f"No such job: {job_id}", param="job_id", code="job_not_found")
    return job


def _file_json(f: StoredFile) -> dict:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None}  # fmt: skip


def _job_json(store: Store, job: Job) -> dict:
    hp = dict(job.hyperparameters or {})
    if job.chosen:  # what "auto" became
        hp.update(
            {
                k: v
                for k, v in {
                    "n_epochs": job.chosen.get("epochs"),
                    "batch_size": job.chosen.get("batch_size"),
                }.items()
                if v is not None
            }
        )
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


def _event_json(e: Event) -> dict:
    return {"id": e.id, "object": "fine_tuning.job.event", "created_at": e.created_at, "level": e.level,
            "message": e.message, "data": e.data, "type": e.type}  # fmt: skip


def _checkpoint_json(c: Checkpoint) -> dict:
    metrics = {k: v for k, v in (c.metrics or {}).items() if v is not None}
    return {"id": c.id, "object": "fine_tuning.job.checkpoint", "created_at": c.created_at,
            "fine_tuned_model_checkpoint": c.model, "fine_tuning_job_id": c.job_id, "metrics": metrics,
            "step_number": c.step}  # fmt: skip
