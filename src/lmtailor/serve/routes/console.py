"""The parts of the API the web console needs beyond OpenAI's: model cards, data inspection, cleaning and
splitting of uploaded files, the train form's schema and memory estimate, an eval job's per-example
answers, and the arena's votes. Each is an ordinary endpoint under /v1/lmtailor (the console is a client of
the public API, like the CLI and the SDK: no second code path), each runs the same functions as the CLI.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from starlette.background import BackgroundTask

from lmtailor.data import ops
from lmtailor.data.summary import summarize, write_jsonl
from lmtailor.errors import LmtailorError
from lmtailor.platform.store import Checkpoint, Model, Store, Vote, new_id, now
from lmtailor.platform.store import File as StoredFile
from lmtailor.serve.protocol import ApiError
from lmtailor.serve.shared import PoolDep, StoreDep, file_json, find_file, find_job, find_model

PREVIEW_ROWS = 20
MAX_ERRORS = 200
HISTOGRAM_BINS = 20


class InspectBody(BaseModel):
    format: Literal["auto", "chat", "alpaca", "sharegpt"] = "auto"
    model: str | None = None  # whose tokenizer counts tokens (the histogram); none: no token counts


class CleanBody(InspectBody):
    dedup: bool = True
    near_dup_threshold: float = Field(0.9, gt=0, le=1)
    mask_pii: bool = False
    max_tokens: int | None = Field(None, ge=1)
    on_error: Literal["fail", "skip"] = ops.CLEAN_ON_ERROR


class SplitBody(BaseModel):
    format: Literal["auto", "chat", "alpaca", "sharegpt"] = "auto"
    ratios: list[float] = [0.8, 0.1, 0.1]
    seed: int = 0
    on_error: Literal["fail", "skip"] = ops.SPLIT_ON_ERROR  # as `lmtailor data split`: data/ops.py


class EstimateBody(BaseModel):
    model: str
    strategy: Literal["auto", "lora", "full", "freeze"] = "auto"
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(512, ge=8)
    lora_r: int = Field(32, ge=1)


class VoteBody(BaseModel):
    model_a: str
    model_b: str
    winner: Literal["a", "b", "tie", "bad"]
    blind: bool = False
    prompt: str | None = Field(None, max_length=20000)


router = APIRouter()

# ---- models ---------------------------------------------------------------------------------------------------


@router.get("/v1/lmtailor/models")
async def list_models(store: StoreDep, pool: PoolDep):
    """Every model the server offers, with its card: base, data, hyperparameters, metrics, parent."""
    jobs = {m.name: m for m in store.models()}
    runs = {j.options["folder"]: j for j in store.jobs(kinds=("train",)) if (j.options or {}).get("folder")}
    loaded = set(pool.loaded)
    cards = [_model_card(store, o, jobs.get(o.id), loaded, runs) for o in pool.offers().values()]
    return {"object": "list", "data": cards}


@router.delete("/v1/models/{model_id:path}")
async def delete_model(model_id: str, store: StoreDep, pool: PoolDep):
    """OpenAI's delete of a fine-tuned model: a job's model or checkpoint, or a tuned folder in the home."""
    offer = find_model(pool, model_id)
    job_model = store.get(Model, model_id)
    folder = Path(offer.ref)
    home_models = (store.home / "models").resolve()
    if job_model is None and not (folder.is_dir() and folder.resolve().parent == home_models):
        raise ApiError(400, f"{model_id} is not a fine-tuned model of this server: only those can be deleted",
                       param="model")  # fmt: skip
    with store.session() as s, s.begin():  # the model and any checkpoint registered inside its folder
        gone = [m.name for m in s.scalars(select(Model))
                if m.name == model_id or _inside(store.path(m.path), folder)]  # fmt: skip
        s.execute(delete(Checkpoint).where(Checkpoint.model.in_(gone)))
        s.execute(delete(Model).where(Model.name.in_(gone)))
    # the folder goes last and by rename first: a crash leaves it registered or gone, never half deleted
    if folder.is_dir():  # gone already (deleted by hand): the registration is what remained
        trash = folder.with_name(f".deleted-{folder.name}-{new_id('x')}")
        folder.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    pool.forget(model_id)
    return {"id": model_id, "object": "model", "deleted": True}


@router.get("/v1/lmtailor/models/{model_id:path}/download")
async def download_model(model_id: str, store: StoreDep, pool: PoolDep):
    """A tuned model folder as a zip (weights, adapter, card, tokenizer; not the checkpoints)."""
    offer = find_model(pool, model_id)
    folder = Path(offer.ref)
    if not (folder / "lmtailor.json").is_file() and store.get(Model, model_id) is None:
        raise ApiError(
            400, f"{model_id} is not a tuned model: its files are where it came from", param="model"
        )
    if not folder.is_dir():
        raise ApiError(404, f"the files of {model_id} are gone", param="model", code="model_not_found")
    target = await asyncio.to_thread(_zip, folder, store.home / "cache")
    name = model_id.replace(":", "_").replace("/", "_") + ".zip"
    return FileResponse(target, filename=name, media_type="application/zip",
                        background=BackgroundTask(target.unlink, missing_ok=True))  # fmt: skip


# ---- data -----------------------------------------------------------------------------------------------------


@router.post("/v1/lmtailor/files/{file_id}/inspect")
async def inspect_file(file_id: str, body: InspectBody, store: StoreDep, pool: PoolDep):
    f = find_file(store, file_id)
    ref = find_model(pool, body.model).ref if body.model else None
    return await asyncio.to_thread(_user_errors, _inspect, store.path(f.path), f.filename, body.format, ref,
                                   store.home)  # fmt: skip


@router.post("/v1/lmtailor/files/{file_id}/clean")
async def clean_file(file_id: str, body: CleanBody, store: StoreDep, pool: PoolDep):
    f = find_file(store, file_id)
    if body.max_tokens and not body.model:
        raise ApiError(400, "max_tokens needs a model, whose tokenizer counts the tokens", param="model")
    ref = find_model(pool, body.model).ref if body.model else None
    return await asyncio.to_thread(_user_errors, _clean, store, f, body, ref)


@router.post("/v1/lmtailor/files/{file_id}/split")
async def split_file(file_id: str, body: SplitBody, store: StoreDep):
    f = find_file(store, file_id)
    return await asyncio.to_thread(_user_errors, _split, store, f, body)


# ---- training -------------------------------------------------------------------------------------------------


@router.get("/v1/lmtailor/schema/train")
async def train_schema():
    """TrainSpec's fields with their defaults and descriptions: the train form is built from it."""
    from lmtailor.specs import TrainSpec

    return TrainSpec.model_json_schema()


@router.post("/v1/lmtailor/estimate")
async def memory_estimate(body: EstimateBody, store: StoreDep, pool: PoolDep):
    import psutil

    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import describe
    from lmtailor.train.memory import estimate

    ref = find_model(pool, body.model).ref
    try:
        info = await asyncio.to_thread(describe, ref, store.home)
        folder = resolve(ref, store.home).path
    except LmtailorError as e:
        raise ApiError(400, str(e), param="model") from e
    out = estimate(folder, body.strategy, body.batch_size, body.max_length, body.lora_r,
                   parameters=info.get("parameters"))  # fmt: skip
    return {**out, "machine": psutil.virtual_memory().total}


# ---- evaluation -----------------------------------------------------------------------------------------------


@router.get("/v1/lmtailor/jobs/{job_id}/predictions")
async def predictions(job_id: str, store: StoreDep, limit: int = 500):
    """An eval job's answers per example, each marked fixed / broken / same against the first model."""
    job = find_job(store, job_id)
    path = store.home / "jobs" / job.id / "eval" / "predictions.jsonl"
    if job.kind != "eval" or not path.is_file():
        raise ApiError(404, f"{job_id} has no answers (yet)", param="job_id")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = (job.options or {}).get("_names") or {}
    return {"object": "list", "data": [_example(r, names) for r in rows[:limit]], "total": len(rows)}


# ---- arena ----------------------------------------------------------------------------------------------------


@router.post("/v1/lmtailor/arena/votes")
async def vote(body: VoteBody, store: StoreDep, pool: PoolDep):
    for m in (body.model_a, body.model_b):
        find_model(pool, m)
    if body.model_a == body.model_b:
        raise ApiError(400, "the two models of a vote must differ", param="model_b")
    store.add(Vote(id=new_id("vote"), created_at=now(), **body.model_dump()))
    return _tally(store)


@router.get("/v1/lmtailor/arena/tally")
async def tally(store: StoreDep):
    """Per model pair (in name order): wins of each, ties and both-bad."""
    return _tally(store)


def _tally(store: Store) -> dict:
    with store.session() as s:
        rows = s.execute(select(Vote.model_a, Vote.model_b, Vote.winner, func.count()).group_by(
            Vote.model_a, Vote.model_b, Vote.winner)).all()  # fmt: skip
    pairs: dict[tuple[str, str], dict] = {}
    for a, b, winner, n in rows:
        first, second = sorted((a, b))
        entry = pairs.setdefault((first, second), {"model_a": first, "model_b": second, "wins_a": 0,
                                                   "wins_b": 0, "ties": 0, "both_bad": 0, "votes": 0})  # fmt: skip
        if winner in ("a", "b"):
            won = a if winner == "a" else b
            entry["wins_a" if won == first else "wins_b"] += n
        else:
            entry["ties" if winner == "tie" else "both_bad"] += n
        entry["votes"] += n
    return {"object": "list", "data": sorted(pairs.values(), key=lambda e: -e["votes"])}


def _inside(path: Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def _user_errors(fn, *args):
    """A data or model problem is the request's: a 400 with the message that names file and line."""
    try:
        return fn(*args)
    except LmtailorError as e:
        raise ApiError(400, str(e), param="file_id") from e


def _model_card(store: Store, offer, job_model, loaded: set[str], runs: dict) -> dict:
    """A model's card; `job` the job or recorded run (platform/record.py) that made it, for its curve."""
    from lmtailor.train.callbacks import last_loss

    folder = Path(offer.ref)
    card = None
    if (folder / "lmtailor.json").is_file():
        try:
            card = json.loads((folder / "lmtailor.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            card = None
    kind = "catalog" if not folder.is_dir() else "tuned" if card else "folder"
    if job_model is not None:
        kind = "checkpoint" if ":ckpt-step-" in offer.id else "fine-tuned"
        if card and card.get("method") == "merge":
            kind = "merged"
        job_card = _job_card(store, job_model)
        if card is None:  # a checkpoint has no card of its own: its job's
            card = job_card
        elif job_card and isinstance((card.get("data") or {}).get("train"), dict):
            card["data"]["train"]["file"] = job_card["data"]["train"]["file"]  # the name it was uploaded as
            # a mixture's files (lmtailor.more_training_files), named as uploaded too
            for source in card["data"].get("sources") or []:
                uploaded = store.get(StoredFile, Path(source["path"]).stem)
                source["file"] = uploaded.filename if uploaded else source["name"]
    keys = ("base_model", "parent", "strategy", "hyperparameters", "data", "metrics", "defaults_chosen")
    run = runs.get(str(folder.resolve())) if job_model is None and folder.is_dir() else None
    return {
        "id": offer.id, "object": "model", "created": offer.created, "kind": kind,
        "job": job_model.job_id if job_model else run.id if run else None,
        "loss": job_model.loss if job_model else last_loss(folder) if card else None,
        "adapter": bool(offer.adapter), "loaded": str(folder.resolve()) in loaded if folder.is_dir() else False,
        "card": {k: card.get(k) for k in keys} if card else None,
    }  # fmt: skip


def _job_card(store: Store, job_model) -> dict | None:
    from lmtailor.platform.store import Job

    job = store.get(Job, job_model.job_id) if job_model.job_id else None
    if job is None:
        return None
    asked = {k: v for k, v in (job.hyperparameters or {}).items() if v != "auto"}
    hyper = {**asked, **(job.options or {}), **(job.chosen or {})}
    train = store.get(StoredFile, job.training_file) if job.training_file else None
    return {"base_model": job.model, "parent": None, "strategy": hyper.get("strategy", "auto"),
            "hyperparameters": hyper, "metrics": {"loss": job_model.loss},
            "data": {"train": {"file": train.filename if train else job.training_file}}}  # fmt: skip


def _inspect(path: Path, filename: str, fmt: str, model_ref: str | None, home) -> dict:
    seen = ops.inspect_file(path, fmt, _tokenizer(model_ref, home))
    loaded = seen.loaded
    return {
        "filename": filename,
        "rows": len(loaded.records) + len(loaded.errors),
        "good": len(loaded.records),
        "bad": len(loaded.errors),
        "summary": seen.summary,
        "errors": [{"line": e.line, "reason": e.reason} for e in loaded.errors[:MAX_ERRORS]],
        "preview": [{"line": r.line, **r.to_chat()} for r in loaded.records[:PREVIEW_ROWS]],
        "histogram": _histogram(seen.lengths or []),
    }


def _histogram(values: list[int], bins: int = HISTOGRAM_BINS) -> dict | None:
    if not values:
        return None
    lo, hi = min(values), max(values)
    width = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * (-(-(hi - lo + 1) // width))
    for v in values:
        counts[(v - lo) // width] += 1
    return {"start": lo, "width": width, "counts": counts}


def _tokenizer(model_ref: str | None, home):
    if model_ref is None:
        return None
    from lmtailor.models.loading import load_tokenizer

    return load_tokenizer(model_ref, home)


def _clean(store: Store, f: StoredFile, body: CleanBody, model_ref: str | None) -> dict:
    tok = _tokenizer(model_ref, store.home)
    cleaned = ops.clean_file(store.path(f.path), body.format, body.on_error, tokenizer=tok, dedup=body.dedup,
                         near_dup_threshold=body.near_dup_threshold, max_tokens=body.max_tokens,
                         mask_pii=body.mask_pii, name=f.filename)  # fmt: skip
    new = _store_records(store, cleaned.kept, f"{Path(f.filename).stem}.clean.jsonl", f.purpose)
    return {"file": new, "report": cleaned.report, "before": summarize(cleaned.loaded.records, tok),
            "after": summarize(cleaned.kept, tok)}  # fmt: skip


def _split(store: Store, f: StoredFile, body: SplitBody) -> dict:
    loaded, parts = ops.split_file(store.path(f.path), body.ratios, body.seed, body.format, body.on_error)
    stem = Path(f.filename).stem
    files = {name: {**_store_records(store, rows, f"{stem}.{name}.jsonl", "evals" if name == "test" else f.purpose),
                    "rows": len(rows)} for name, rows in parts.items() if rows}  # fmt: skip
    return {"files": files, "skipped": len(loaded.errors)}


def _store_records(store: Store, records, filename: str, purpose: str) -> dict:
    file_id = new_id("file")
    rel = f"files/{file_id}.jsonl"
    write_jsonl(records, store.path(rel))
    return file_json(store.add_file(file_id, rel, filename, purpose))


def _example(row: dict, names: dict) -> dict:
    """One test row: the prompt, the reference, each model's answer and scores, and how the last model did
    against the first (fixed: wrong before, right now; broken: the reverse)."""
    preds = row.get("predictions") or {}
    order = list(preds)
    change = None
    if len(order) >= 2:
        first, last = preds[order[0]].get("scores") or {}, preds[order[-1]].get("scores") or {}
        metric = next((m for m in ("accuracy", "exact_match", "contains") if m in first and m in last), None)
        if metric is None and first and last:
            metric = next(iter(first))
        if metric is not None and first.get(metric) is not None and last.get(metric) is not None:
            a, b = float(first[metric]), float(last[metric])
            change = "fixed" if b > a else "broken" if b < a else "same"
    prompt = row.get("prompt")
    question = prompt[-1]["content"] if isinstance(prompt, list) and prompt else prompt
    return {"question": question, "reference": row.get("reference"), "change": change,
            "answers": {names.get(n, n): {"answer": p.get("answer"), "scores": p.get("scores")}
                        for n, p in preds.items()}}  # fmt: skip


def _zip(folder: Path, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="download-", suffix=".zip", dir=cache)
    with open(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and rel.parts[0] != "checkpoints":
                z.write(path, f"{folder.name}/{rel}")
    return Path(name)
