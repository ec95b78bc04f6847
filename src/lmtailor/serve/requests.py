"""A generation request as the engines see it, and the events they send back to the API.

The engine thread calls `Request.push`, which hands each event to the request's asyncio loop; the API
side reads them with `await req.next()`. Text is decoded incrementally: a sequence emits only text that
can no longer change (no half UTF-8 character, no prefix of a stop string).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full or the model is being unloaded: the client should retry."""


class RequestTimeout(Exception):
    """The request ran past its time limit."""


# temperatures below this are greedy, as in vLLM: logits divided by 1e-103 overflow to inf, and softmax to nan
GREEDY_BELOW = 1e-5


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class Delta:
    index: int
    text: str
    logprobs: list[dict]  # one entry per token: {"token", "logprob", "bytes", "top_logprobs"}


@dataclass
class Finished:
    index: int
    reason: str  # "stop" | "length"


@dataclass
class Done:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    error: Exception


class Sequence:
    """One choice of a request: its tokens, the text emitted so far, and its own random generator."""

    def __init__(self, index: int, sampling: Sampling):
        import torch

        self.index = index
        self.sampling = sampling
        self.tokens: list[int] = []
        self.counts: dict[int, int] = {}
        self.emitted = 0  # characters of the decoded text already sent
        self.text = ""
        self.finish_reason: str | None = None
        self.generator = None
        if sampling.temperature >= GREEDY_BELOW:
            seed = (
                sampling.seed + index
                if sampling.seed is not None
                else int.from_bytes(os.urandom(6), "little")
            )
            self.generator = torch.Generator().manual_seed(seed)

    def choose(self, logits) -> tuple[int, float | None, list[tuple[int, float]]]:
        """The next token from one row of logits (float32, on any device), with its logprob and the top ones."""
        import torch

        s = self.sampling
        if self.counts and (s.presence_penalty or s.frequency_penalty):
            idx = torch.tensor(list(self.counts), device=logits.device)
            n = torch.tensor(list(self.counts.values()), dtype=logits.dtype, device=logits.device)
            logits = logits.clone()
            logits[idx] -= s.frequency_penalty * n + s.presence_penalty
        if self.generator is None:
            token = int(logits.argmax())
        else:
            scaled = logits / s.temperature
            probs = torch.softmax(scaled, -1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > s.top_p  # keep the smallest set reaching top_p
                sorted_p[drop] = 0
                probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            token = int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
        if not s.logprobs:
            return token, None, []
        logp = torch.log_softmax(logits, -1)
        top = []
        if s.top_logprobs:
            values, ids = logp.topk(s.top_logprobs)
            top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
        return token, float(logp[token]), top

    def append(self, token: int, logprob, top, tokenizer, req: Request) -> None:
        self.tokens.append(token)
        self.counts[token] = self.counts.get(token, 0) + 1
        full = tokenizer.decode(self.tokens, skip_special_tokens=True)
        entries = [_entry(tokenizer, token, logprob, top)] if logprob is not None else []
        stops = self.sampling.stop
        if stops:
            start = max(0, self.emitted - max(len(x) for x in stops))
            hits = [p for p in (full.find(x, start) for x in stops) if p >= 0]
            if hits:
                self.text = full[: min(hits)]
                self._emit(req, entries)
                self.finish("stop", req, flush=False)
                return
        safe = len(full) - full.endswith("\ufffd")  # half of a multi-byte character: wait for the rest
        visible = full[:safe]
        safe -= max((k for x in stops for k in range(1, len(x)) if visible.endswith(x[:k])), default=0)
        self.text = full
        self._emit(req, entries, upto=max(self.emitted, safe))

    def _emit(self, req: Request, entries: list[dict], upto: int | None = None) -> None:
        upto = len(self.text) if upto is None else upto
        piece = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        if piece or entries:
            if req.first_token_at is None:
                req.first_token_at = time.monotonic()
            req.push(Delta(self.index, piece, entries))

    def finish(self, reason: str, req: Request, flush: bool = True) -> None:
        if flush:
            self.text = self.text.rstrip("\ufffd")
            self._emit(req, [])
        self.finish_reason = reason
        req.push(Finished(self.index, reason))
        if all(s.finish_reason for s in req.seqs):
            req.push(Done(len(req.prompt_ids), sum(len(s.tokens) for s in req.seqs)))


def _entry(tokenizer, token: int, logprob: float, top: list[tuple[int, float]]) -> dict:
    def one(t: int, lp: float) -> dict:
        text = tokenizer.decode([t])
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {**one(token, logprob), "top_logprobs": [one(t, lp) for t, lp in top]}


class Request:
    """What the API hands an engine: prompt tokens, sampling settings, and where events go."""

    def __init__(self, prompt_ids: list[int], sampling: Sampling, adapter: str | None = None,
                 timeout: float | None = None, loop: asyncio.AbstractEventLoop | None = None):  # fmt: skip
        self.id = uuid.uuid4().hex
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.adapter = adapter
        self.seqs = [Sequence(i, sampling) for i in range(sampling.n)]
        self.created = time.monotonic()
        self.deadline = self.created + timeout if timeout else None
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.cancelled = False
        self.failed: Exception | None = None
        self.loop = loop or asyncio.get_running_loop()
        self.events: asyncio.Queue[Any] = asyncio.Queue()

    def push(self, event) -> None:
        """Called from the engine thread: deliver an event to the request's loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the client is gone
            self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True

    def fail(self, error: Exception) -> None:
        if self.failed is None:
            self.failed = error
            self.push(Failed(error))

    def time_out(self) -> None:
        self.fail(RequestTimeout("the request ran past its time limit"))

    async def next(self):
        return await self.events.get()
