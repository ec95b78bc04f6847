"""OpenAI's graders endpoints: POST /v1/fine_tuning/alpha/graders/validate and /run, same shapes.

Model graders (score_model, label_model) name either a model this server serves, asked through this
server's own /v1/chat/completions with the caller's key, or an endpoint `openai:MODEL@BASE_URL`, asked with
the key in $LMTAILOR_ENDPOINT_API_KEY.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter, Request

from lmtailor.graders.core import check, grade, sample_namespace
from lmtailor.serve.protocol import ApiError


def make_ask(base_url: str, api_key: str | None):
    """ask(model, messages, sampling_params) -> (text, tokens), through an OpenAI-compatible chat endpoint."""

    def ask(model: str, messages: list[dict], params: dict) -> tuple[str, int]:
        import openai

        from lmtailor.evaluate.runner import parse_endpoint

        endpoint = parse_endpoint(model)
        url, key, name = base_url, api_key, model
        if endpoint is not None:
            url, key, name = (
                endpoint.base_url or base_url,
                os.environ.get("LMTAILOR_ENDPOINT_API_KEY"),
                endpoint.model,
            )
        client = openai.OpenAI(base_url=url, api_key=key or "none", max_retries=1, timeout=120)
        kw = {k: params[k] for k in ("temperature", "top_p", "seed") if params.get(k) is not None}
        if params.get("max_completions_tokens"):
            kw["max_tokens"] = params["max_completions_tokens"]
        reply = client.chat.completions.create(model=name, messages=messages, **{"temperature": 0, **kw})
        usage = reply.usage.total_tokens if reply.usage else 0
        return reply.choices[0].message.content or "", usage

    return ask


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
