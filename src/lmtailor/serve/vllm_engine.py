"""The engine for GPUs: vLLM's AsyncLLM behind the same interface and events as `TransformersEngine`.

vLLM does the batching, sampling, stop strings and incremental detokenization; this file only turns its
delta outputs into our events. AsyncLLM is bound to the event loop it first runs on, so the engine owns
one loop in its own thread (as the transformers engine owns its thread): requests may come from any loop
or thread, and events reach theirs through `Request.push`. Tuned LoRA models are LoRARequests on the
shared base, like peft adapters there.

Written against vLLM's v1 API (`vllm.AsyncLLMEngine`, an alias of `vllm.v1.engine.async_llm.AsyncLLM`
since 0.8; the same calls exist in the V0 engine 0.8 falls back to): `generate(prompt, params, request_id,
lora_request=)`, `abort(request_id)`, `SamplingParams(output_kind=RequestOutputKind.DELTA)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import threading
import time

from lmtailor.errors import ModelError
from lmtailor.serve.requests import GREEDY_BELOW, Delta, Done, Finished, Overloaded, Request, _entry

MAX_LORAS = 4  # adapters in one batch at once; each slot holds GPU memory for a rank-max_lora_rank adapter


def unavailable_reason() -> str | None:
    """None when vLLM can serve here, else why not, in one line."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm)"
    import torch

    # device_count asks NVML: unlike is_available it does not initialise CUDA, which breaks forked workers.
    if torch.cuda.device_count() == 0:
        return "no CUDA device: vLLM needs a GPU"
    return None


class VllmEngine:
    """Serves one set of base weights on vLLM; tuned LoRA models of that base are LoRARequests on them."""

    kind = "vllm"

    def __init__(self, path: str, tokenizer, name: str, tensor_parallel_size: int = 1, max_batch: int = 64,
                 max_queue: int = 256, max_lora_rank: int = 64, dtype: str = "auto",
                 trust_remote_code: bool = False):  # fmt: skip
        # The server runs threads by now (uvicorn, this loop); a forked worker could inherit a held lock.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import AsyncEngineArgs

        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.adapters: dict[str, str] = {}  # adapter name -> folder
        vocab = tokenizer.get_vocab()
        self._stop_ids = [vocab["<|im_end|>"]] if "<|im_end|>" in vocab else []  # as _eos_ids in engine.py
        self._loras: dict[str, object] = {}  # adapter name -> LoRARequest
        self._requests: dict[str, Request] = {}  # in flight, by id; guarded by _lock
        self._tasks: dict[str, asyncio.Task] = {}  # touched only on the loop
        self._lock = threading.Lock()
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"vllm-{name}", daemon=True)
        self._thread.start()
        args = AsyncEngineArgs(
            model=path, tokenizer=path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
            trust_remote_code=trust_remote_code, max_num_seqs=max_batch, enable_lora=True,
            max_loras=MAX_LORAS, max_lora_rank=max_lora_rank, disable_log_stats=True,
        )  # fmt: skip
        try:
            self._call(self._open(args))
        except Exception as e:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise ModelError(f"vLLM cannot load {path}: {e}") from e
        config = getattr(self.llm, "model_config", None) or self.llm.engine.model_config  # v1 | V0
        self.context = int(config.max_model_len)

    # ---- the API side (any thread) -----------------------------------------------------------------------

    def submit(self, req: Request) -> None:
        with self._lock:
            if self._stopped:
                raise Overloaded("the model is being unloaded; retry")
            if self.queued() >= self.max_queue:
                raise Overloaded(f"{self.queued()} requests already wait for {self.name}; retry later")
            self._requests[req.id] = req
        self._loop.call_soon_threadsafe(self._start, req)

    def queued(self) -> int:
        """Requests submitted that have no output yet: waiting, as the transformers engine counts them."""
        return sum(r.started_at is None for r in list(self._requests.values()))

    def busy(self) -> bool:
        return bool(self._requests)

    def add_adapter(self, name: str, folder: str) -> None:
        """Register a LoRA adapter under a stable id, loaded now so a bad one fails here, not mid-request."""
        from vllm.lora.request import LoRARequest

        if name in self.adapters:
            return
        lora = LoRARequest(name, len(self._loras) + 1, str(folder))
        try:
            self._call(self.llm.add_lora(lora))
        except Exception as e:
            raise ModelError(f"vLLM cannot load the adapter {folder}: {e}") from e
        self._loras[name] = lora
        self.adapters[name] = str(folder)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            reqs = list(self._requests.values())
        for req in reqs:
            req.fail(Overloaded("the model was unloaded; retry"))
        with contextlib.suppress(Exception):
            self._call(self._close(), timeout=120)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ---- the engine's loop ------------------------------------------------------------------------------

    async def _open(self, args) -> None:
        from vllm import AsyncLLMEngine

        self.llm = AsyncLLMEngine.from_engine_args(args)
        self._watcher = asyncio.create_task(self._watch())

    async def _close(self) -> None:
        self._watcher.cancel()
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        shutdown = getattr(self.llm, "shutdown", None)  # v1: stops the engine process, freeing the GPU
        if shutdown:
            shutdown()

    async def _watch(self) -> None:
        """Cancel the generation of requests whose client left or whose time ran out."""
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for rid, task in list(self._tasks.items()):
                req = self._requests.get(rid)
                if req and not task.cancelling() and (req.cancelled or (req.deadline and now > req.deadline)):
                    task.cancel()

    def _start(self, req: Request) -> None:
        self._tasks[req.id] = self._loop.create_task(self._generate(req))

    async def _generate(self, req: Request) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        stream, finished = None, False
        try:
            if req.cancelled:
                return
            if req.deadline and time.monotonic() > req.deadline:
                req.time_out()
                return
            s = req.sampling
            # vLLM refuses n > 1 when greedy (t below GREEDY_BELOW, its own bound): the n choices would match,
            # so run one and copy it.
            copies = s.n if s.temperature < GREEDY_BELOW and s.n > 1 else 1
            params = SamplingParams(
                n=1 if copies > 1 else s.n, temperature=s.temperature, top_p=s.top_p,
                max_tokens=s.max_tokens, stop=s.stop or None, stop_token_ids=self._stop_ids, seed=s.seed,
                presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty,
                logprobs=s.top_logprobs if s.logprobs else None, output_kind=RequestOutputKind.DELTA,
            )  # fmt: skip
            lora = self._loras[req.adapter] if req.adapter else None
            stream = self.llm.generate(
                {"prompt_token_ids": req.prompt_ids}, params, req.id, lora_request=lora
            )
            generated = 0
            async for out in stream:
                if req.started_at is None:
                    req.started_at = time.monotonic()
                for c in out.outputs:
                    generated += len(c.token_ids) * copies
                    self._emit(req, c, range(s.n) if copies > 1 else [c.index])
            finished = True
            req.push(Done(len(req.prompt_ids), generated))
        except asyncio.CancelledError:
            if not (self._stopped or req.cancelled):
                req.time_out()
        except Exception as e:
            req.fail(e)
        finally:
            self._tasks.pop(req.id, None)
            with self._lock:
                self._requests.pop(req.id, None)
            if stream is not None and not finished:
                with contextlib.suppress(Exception):
                    await self.llm.abort(req.id)  # a no-op when vLLM already aborted it
                    await stream.aclose()

    def _emit(self, req: Request, c, indices) -> None:
        """Events for vLLM's delta output `c` (new text, tokens, logprobs), sent as the choices `indices`."""
        entries = []
        if req.sampling.logprobs and c.logprobs and c.token_ids:
            k = req.sampling.top_logprobs
            for token, options in zip(c.token_ids, c.logprobs[-len(c.token_ids) :], strict=True):
                ranked = sorted((x.rank, t, x.logprob) for t, x in options.items() if x.rank and x.rank <= k)
                entries.append(
                    _entry(
                        self.tokenizer, token, options[token].logprob, [(t, lp) for _, t, lp in ranked[:k]]
                    )
                )
        reason = c.finish_reason
        if reason and reason not in ("stop", "length"):
            raise (Overloaded if reason == "abort" else RuntimeError)(f"vLLM ended the generation ({reason})")
        for i in indices:
            if c.text or entries:
                if req.first_token_at is None:
                    req.first_token_at = time.monotonic()
                req.push(Delta(i, c.text, entries))
            if reason:
                req.push(Finished(i, reason))
