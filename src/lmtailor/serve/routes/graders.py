"""OpenAI's graders endpoints: POST /v1/fine_tuning/alpha/graders/validate and /run, same shapes.

Model graders (score_model, label_model) name either a model this server serves, asked through this
server's own /v1/chat/completions with the caller's key, or an endpoint `openai:MODEL@BASE_URL`, asked with
the key in $LMTAILOR_ENDPOINT_API_KEY.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from lmtailor.graders.ask import make_ask
from lmtailor.graders.core import check, grade, sample_namespace
from lmtailor.serve.protocol import ApiError

router = APIRouter()


@router.post("/v1/fine_tuning/alpha/graders/validate")
async def validate(body: dict):
    grader = body.get("grader")
    if why := check(grader, server=True):
        raise ApiError(400, why, param=why.split(":", 1)[0])
    return {"grader": grader}


@router.post("/v1/fine_tuning/alpha/graders/run")
async def run(body: dict, request: Request):
    grader = body.get("grader")
    if why := check(grader, server=True):
        raise ApiError(400, why, param=why.split(":", 1)[0])
    sample = body.get("model_sample")
    if not isinstance(sample, str):
        raise ApiError(400, "model_sample: the model's output, a string", param="model_sample")
    item = body.get("item") or {}
    if "reference_answer" in body and isinstance(item, dict):
        item = {"reference_answer": body["reference_answer"], **item}
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else None
    ask = make_ask(str(request.base_url).rstrip("/") + "/v1", key)
    result = await asyncio.to_thread(grade, grader, sample_namespace(sample), item, ask)
    return result.response()
