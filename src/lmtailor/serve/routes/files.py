"""OpenAI's /v1/files: upload (multipart), list, retrieve, content, delete."""

from __future__ import annotations

import os
from typing import Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse
from sqlalchemy import select

from lmtailor.platform.store import File as StoredFile
from lmtailor.platform.store import new_id
from lmtailor.serve.protocol import ApiError
from lmtailor.serve.shared import (
    PartsDep,
    StoreDep,
    check_limit,
    file_json,
    find_file,
    more_file_ids,
    ordered_after,
    page,
)

# suffixes an upload keeps: data files; documents for synth jobs (data/documents.SUFFIXES) except as training
# or eval data, where a train.txt is JSONL under another name, as OpenAI takes it
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "vision", "user_data", "evals")

router = APIRouter()


@router.post("/v1/files")
async def upload(parts: PartsDep, file: UploadFile = File(...), purpose: str = Form(...)):
    if purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
    store, limit = parts.store, parts.max_upload
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
                if size > limit:
                    raise ApiError(413, f"the file is over the upload limit of {limit} bytes",
                                   param="file", code="file_too_large")  # fmt: skip
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)  # a crash mid-upload leaves only a .part file, never a half file
    finally:
        tmp.unlink(missing_ok=True)
    return file_json(store.add_file(file_id, rel, name, purpose))


@router.get("/v1/files")
async def list_files(store: StoreDep, purpose: str | None = None, limit: int = 10000, after: str | None = None,
                     order: Literal["asc", "desc"] = "desc"):  # fmt: skip
    limit = check_limit(limit)
    with store.session() as s:
        q = select(StoredFile).where(StoredFile.deleted.is_(False))
        if purpose:
            q = q.where(StoredFile.purpose == purpose)
        q = ordered_after(s, q, StoredFile, after, order)
        rows = list(s.scalars(q.limit(max(1, min(limit, 10000)) + 1)))
    return page([file_json(f) for f in rows], limit)


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, store: StoreDep):
    return file_json(find_file(store, file_id))


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, store: StoreDep):
    f = find_file(store, file_id)
    return FileResponse(store.path(f.path), filename=f.filename, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, store: StoreDep):
    f = find_file(store, file_id)
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
