"""The models and text generation endpoints: /v1/models, /v1/chat/completions, /v1/completions and /metrics.

Any OpenAI client works against them by changing its base URL. Errors have OpenAI's shape and status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from lmtailor.errors import LmtailorError
from lmtailor.serve.metrics import Metrics
from lmtailor.serve.pool import ModelPool
from lmtailor.serve.protocol import ApiError, ChatRequest, CompletionRequest
from lmtailor.serve.requests import Delta, Done, Failed, Finished, Overloaded, RequestTimeout, Sampling
from lmtailor.serve.requests import Request as GenRequest
from lmtailor.serve.shared import PartsDep, PoolDep, find_model

DEFAULT_MAX_TOKENS = 2048

router = APIRouter()


@router.get("/metrics")
async def prometheus(parts: PartsDep):
    return Response(generate_latest(parts.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def list_models(pool: PoolDep):
    return {"object": "list", "data": [_model_json(o) for o in pool.offers().values()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, pool: PoolDep):
    return _model_json(find_model(pool, model_id))


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request, parts: PartsDep):
    engine, adapter = await _acquire(parts.pool, body.model)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]  # fmt: skip
    try:
        ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = engine.tokenizer(ids, add_special_tokens=False)["input_ids"]
    except Exception as e:  # a template that rejects the role order, say
        raise ApiError(
            400, f"the model's chat template rejected these messages: {e}", param="messages"
        ) from e
    sampling = _sampling(body, body.limit(), engine, len(ids), logprobs=body.logprobs,
                         top=body.top_logprobs or 0)  # fmt: skip
    req = _submit(engine, ids, sampling, adapter, parts.timeout)
    return await _respond(request, req, body, "chat", parts.metrics)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, parts: PartsDep):
    engine, adapter = await _acquire(parts.pool, body.model)
    if len(body.prompts()) > 1:
        raise ApiError(400, "one prompt per request: send the others as their own requests", param="prompt")
    prompt = body.prompts()[0]
    ids = (
        prompt if isinstance(prompt, list) else engine.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    )
    vocab = len(engine.tokenizer)
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if bad := [t for t in ids if not 0 <= t < vocab]:
        raise ApiError(400, f"token ids outside this model's vocabulary (0..{vocab - 1}): {bad[:5]}",
                       param="prompt")  # fmt: skip
    sampling = _sampling(body, body.max_tokens, engine, len(ids), logprobs=body.logprobs is not None,
                         top=body.logprobs or 0)  # fmt: skip
    req = _submit(engine, ids, sampling, adapter, parts.timeout)
    echo = engine.tokenizer.decode(ids, skip_special_tokens=True) if body.echo else ""
    return await _respond(request, req, body, "text", parts.metrics, echo=echo)


def _model_json(offer) -> dict:
    return {"id": offer.id, "object": "model", "created": offer.created, "owned_by": "lmtailor"}


async def _acquire(pool: ModelPool, model_id: str):
    find_model(pool, model_id)
    try:
        return await pool.acquire(model_id)
    except Overloaded as e:
        raise ApiError(503, str(e), type="server_error", code="overloaded") from e
    except LmtailorError as e:
        raise ApiError(
            503, f"cannot load {model_id}: {e}", type="server_error", code="model_unavailable"
        ) from e


def _sampling(body, limit: int | None, engine, prompt_len: int, logprobs: bool, top: int) -> Sampling:
    room = engine.context - prompt_len
    if room < 1:
        raise ApiError(400, f"the prompt has {prompt_len} tokens; this model's context is {engine.context}",
                       param="messages", code="context_length_exceeded")  # fmt: skip
    temperature = 1.0 if body.temperature is None else body.temperature
    return Sampling(
        max_tokens=min(limit or DEFAULT_MAX_TOKENS, room), temperature=temperature,
        top_p=1.0 if body.top_p is None else body.top_p, n=body.n, stop=body.stops(), seed=body.seed,
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
        logprobs=logprobs, top_logprobs=top,
    )  # fmt: skip


def _submit(engine, ids, sampling: Sampling, adapter, timeout: float) -> GenRequest:
    req = GenRequest(ids, sampling, adapter=adapter, timeout=timeout)
    try:
        engine.submit(req)
    except Overloaded as e:
        raise ApiError(503, str(e), type="server_error", code="overloaded") from e
    except ValueError as e:
        raise ApiError(400, str(e), param="n") from e
    return req


def _error_of(e: Exception) -> ApiError:
    if isinstance(e, RequestTimeout):
        return ApiError(504, str(e), type="server_error", code="timeout")
    if isinstance(e, Overloaded):
        return ApiError(503, str(e), type="server_error", code="overloaded")
    return ApiError(500, f"generation failed: {e}", type="server_error")


async def _respond(request: Request, req: GenRequest, body, kind: str, metrics: Metrics, echo: str = ""):
    started = time.monotonic()
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
    endpoint = "chat" if kind == "chat" else "completions"

    def account(status: str, done: Done | None) -> None:
        metrics.requests.labels(endpoint, body.model, status).inc()
        metrics.latency.labels(endpoint).observe(time.monotonic() - started)
        if req.first_token_at:
            metrics.ttft.observe(req.first_token_at - req.created)
        if done:
            metrics.prompt_tokens.labels(body.model).inc(done.prompt_tokens)
            metrics.completion_tokens.labels(body.model).inc(done.completion_tokens)

    if body.stream:
        return StreamingResponse(
            _stream(req, body, kind, rid, account, echo), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip
    n = body.n
    texts, entries, reasons = [echo] * n, [[] for _ in range(n)], [None] * n
    async for event in _events(request, req):
        if event is None:
            account("disconnected", None)
            return Response(status_code=499)
        if isinstance(event, Delta):
            texts[event.index] += event.text
            entries[event.index] += event.logprobs
        elif isinstance(event, Finished):
            reasons[event.index] = event.reason
        elif isinstance(event, Failed):
            err = _error_of(event.error)
            account(str(err.status), None)
            raise err
        elif isinstance(event, Done):
            break
    account("200", event)
    usage = {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
             "total_tokens": event.prompt_tokens + event.completion_tokens}  # fmt: skip
    choices = [_choice(kind, i, texts[i], entries[i], reasons[i], body) for i in range(n)]
    obj = "chat.completion" if kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": body.model, "choices": choices,
            "usage": usage, "system_fingerprint": None}  # fmt: skip


async def _events(request: Request, req: GenRequest):
    """The engine's events for `req`; None (and its generation cancelled) once the client has gone."""
    getter = None
    try:
        while True:
            getter = getter or asyncio.ensure_future(req.next())
            done, _ = await asyncio.wait({getter}, timeout=0.5)
            if done:
                event, getter = getter.result(), None
                yield event
            elif await request.is_disconnected():
                req.cancel()
                yield None
                return
    finally:
        if getter:
            getter.cancel()
        req.cancel()  # no-op when finished; stops generation when the handler is torn down early


def _choice(kind: str, i: int, text: str, entries: list[dict], reason, body) -> dict:
    if kind == "chat":
        lp = {"content": entries, "refusal": None} if body.logprobs else None
        return {"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": lp, "finish_reason": reason}  # fmt: skip
    return {"index": i, "text": text, "logprobs": _legacy_logprobs(entries) if body.logprobs is not None else None,
            "finish_reason": reason}  # fmt: skip


def _legacy_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """The completions API's older logprobs shape: parallel lists of tokens, logprobs and offsets."""
    offsets, pos = [], offset
    for e in entries:
        offsets.append(pos)
        pos += len(e["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}  # fmt: skip


async def _stream(req: GenRequest, body, kind: str, rid: str, account, echo: str) -> AsyncIterator[str]:
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    status, done = "disconnected", None

    def chunk(choices: list[dict], usage: dict | None = None) -> str:
        data = {"id": rid, "object": obj, "created": created, "model": body.model, "choices": choices,
                "system_fingerprint": None}  # fmt: skip
        if usage is not None or (body.stream_options and body.stream_options.include_usage):
            data["usage"] = usage
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def piece(i: int, text: str | None, entries: list[dict], reason=None, role: bool = False) -> dict:
        if kind == "chat":
            delta = (
                {"role": "assistant", "content": ""}
                if role
                else ({"content": text} if text is not None else {})
            )
            lp = {"content": entries, "refusal": None} if body.logprobs and entries else None
            return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
        lp = _legacy_logprobs(entries) if body.logprobs is not None and entries else None
        return {"index": i, "text": text or "", "logprobs": lp, "finish_reason": reason}

    try:
        for i in range(body.n):
            if kind == "chat":
                yield chunk([piece(i, None, [], role=True)])
            elif echo:
                yield chunk([piece(i, echo, [])])
        while True:
            event = await req.next()
            if isinstance(event, Delta):
                yield chunk([piece(event.index, event.text, event.logprobs)])
            elif isinstance(event, Finished):
                yield chunk([piece(event.index, None if kind == "chat" else "", [], reason=event.reason)])
            elif isinstance(event, Failed):
                err = _error_of(event.error)
                status = str(err.status)
                yield f"data: {json.dumps(err.body())}\n\n"
                break
            elif isinstance(event, Done):
                status, done = "200", event
                if body.stream_options and body.stream_options.include_usage:
                    total = event.prompt_tokens + event.completion_tokens
                    yield chunk([], {"prompt_tokens": event.prompt_tokens,
                                     "completion_tokens": event.completion_tokens, "total_tokens": total})  # fmt: skip
                break
        yield "data: [DONE]\n\n"
    finally:
        req.cancel()  # the client went away mid-stream: stop generating for it
        account(status, done)
