"""Continuous batching on transformers: one thread steps every running sequence together.

Why by hand: `model.generate` runs one fixed batch to its end (a short request waits for a long one, and
sampling settings are per batch), and transformers' own continuous-batching manager has no per-request
penalties, seeds, top-logprobs or stop strings. So the loop here owns the scheduling and the sampling,
and leaves the model, its KV cache (`DynamicCache`) and peft's mixed-adapter batches to the libraries.

Each step: admit waiting requests (prefilled together, left-padded, their caches joined onto the running
batch), run one decode forward for every running sequence, sample each row with its own settings, emit
text, and drop the rows that finished, were cancelled or ran out of time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmtailor.serve.requests import Overloaded, Request, Sequence


@dataclass
class _Row:
    req: Request
    seq: Sequence
    last: int  # the token sampled last, fed at the next step
    length: int  # real (unpadded) tokens in the cache for this row


@dataclass
class EngineStats:
    steps: int = 0
    generated: int = 0
    prefilled: int = 0
    started: float = field(default_factory=time.monotonic)


class TransformersEngine:
    """Serves one set of base weights; tuned LoRA models of that base are adapters on the same weights."""

    kind = "transformers"

    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64, name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.context = _context_length(model)
        self.eos = _eos_ids(model, tokenizer)
        self.waiting: deque[Request] = deque()
        self.rows: list[_Row] = []
        self.adapters: dict[str, str] = {}  # model id -> folder
        # peft keeps adapters in a ModuleDict, whose keys may not hold "." (ft:qwen2.5-…): a safe name per id
        self._adapter_keys: dict[str, str] = {}
        self.stats = EngineStats()
        self._cache = None
        self._mask = None
        self._cond = threading.Condition()
        self._step = threading.Lock()  # held through each step; adding an adapter rewrites modules in place
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # ---- the API side (event-loop threads) -------------------------------------------------------------

    def submit(self, req: Request) -> None:
        if req.sampling.n > self.max_batch:
            raise ValueError(f"n={req.sampling.n} is more than this server runs at once ({self.max_batch})")
        with self._cond:
            if self._stop:
                raise Overloaded("the model is being unloaded; retry")
            if self.queued() >= self.max_queue:
                raise Overloaded(f"{self.queued()} requests already wait for {self.name}; retry later")
            self.waiting.append(req)
            self._cond.notify()

    def queued(self) -> int:
        return len(self.waiting)

    def busy(self) -> bool:
        return bool(self.waiting or self.rows)

    def add_adapter(self, name: str, folder: str) -> None:
        """Load a LoRA adapter onto the shared base weights (between steps, under the engine lock)."""
        from peft import PeftModel

        with self._step:
            if name in self.adapters:
                return
            key = "a" + hashlib.sha1(name.encode()).hexdigest()[:16]
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=key)
            else:
                self.model.load_adapter(folder, adapter_name=key)
            self.model.eval()
            self._adapter_keys[name] = key
            self.adapters[name] = folder

    def _adapter_key(self, name: str | None) -> str:
        return self._adapter_keys.get(name, "__base__") if name else "__base__"

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)
        for req in list(self.waiting) + [r.req for r in self.rows]:
            req.fail(Overloaded("the model was unloaded; retry"))

    # ---- the engine thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stop and not self.waiting and not self.rows:
                        self._cond.wait()
                    if self._stop:
                        return
                    new = self._take_waiting()
                try:
                    with self._step:
                        if new:
                            self._prefill(new)
                        if self.rows:
                            self._decode()
                except Exception as e:  # a failed step fails its requests, not the server
                    for req in {id(r.req): r.req for r in self.rows}.values():
                        req.fail(e)
                    for req in new:
                        req.fail(e)
                    self.rows, self._cache, self._mask = [], None, None

    def _take_waiting(self) -> list[Request]:
        room = self.max_batch - len(self.rows)
        taken = []
        while self.waiting and self.waiting[0].sampling.n <= room:
            req = self.waiting.popleft()
            if req.cancelled:
                continue
            if req.deadline and time.monotonic() > req.deadline:
                req.time_out()
                continue
            taken.append(req)
            room -= req.sampling.n
        return taken

    def _forward(self, input_ids, mask, positions, cache, adapters):
        kwargs: dict[str, Any] = {}
        if self.adapters:
            kwargs["adapter_names"] = adapters
        out = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
            use_cache=True, logits_to_keep=1, **kwargs,
        )  # fmt: skip
        return out.logits[:, -1, :].float(), out.cache

    def _prefill(self, reqs: list[Request]) -> None:
        import torch
        from transformers import DynamicCache

        device = self.model.device
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        adapters = [self._adapter_key(r.adapter) for r in reqs]
        logits, cache = self._forward(
            ids.to(device), mask.to(device), positions.to(device), DynamicCache(), adapters
        )
        self.stats.prefilled += int(mask.sum())
        # n choices of one prompt share its prefill: repeat its cache row n times.
        repeat = torch.tensor([r.sampling.n for r in reqs])
        if int(repeat.max()) > 1:
            index = torch.repeat_interleave(torch.arange(len(reqs)), repeat).to(device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
            logits, mask = logits[index], mask[index.cpu()]
        rows = []
        for r in reqs:
            r.started_at = time.monotonic()
            for s in r.seqs:
                rows.append(_Row(r, s, -1, len(r.prompt_ids)))
        self._join(rows, cache, mask.to(device))
        self._sample(logits, first=len(self.rows) - len(rows))

    def _join(self, rows: list[_Row], cache, mask) -> None:
        """Append new rows (their cache and mask) to the running batch, left-padding the shorter side."""
        import torch
        import torch.nn.functional as F

        if self._cache is None:
            self.rows, self._cache, self._mask = rows, cache, mask
            return
        old, new = self._mask.shape[1], mask.shape[1]
        width = max(old, new)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat(
                [F.pad(mine.keys, (0, 0, width - old, 0)), F.pad(theirs.keys, (0, 0, width - new, 0))]
            )
            mine.values = torch.cat(
                [F.pad(mine.values, (0, 0, width - old, 0)), F.pad(theirs.values, (0, 0, width - new, 0))]
            )
        self._mask = torch.cat([F.pad(self._mask, (width - old, 0)), F.pad(mask, (width - new, 0))])
        self.rows = self.rows + rows

    def _decode(self) -> None:
        import torch

        device = self.model.device
        ids = torch.tensor([[r.last] for r in self.rows], device=device)
        self._mask = torch.cat(
            [self._mask, torch.ones((len(self.rows), 1), dtype=self._mask.dtype, device=device)], 1
        )
        positions = torch.tensor([[r.length] for r in self.rows], device=device)
        adapters = [self._adapter_key(r.req.adapter) for r in self.rows]
        logits, self._cache = self._forward(ids, self._mask, positions, self._cache, adapters)
        for r in self.rows:
            r.length += 1
        self.stats.steps += 1
        self._sample(logits, first=0)

    def _sample(self, logits, first: int) -> None:
        """Choose the next token of rows[first:] (logits[0] is rows[first]'s), emit their text, then drop every
        finished row."""
        import torch

        now = time.monotonic()
        for i in range(first, len(self.rows)):
            row = self.rows[i]
            seq, req = row.seq, row.req
            if seq.finish_reason or req.cancelled:
                continue
            if req.deadline and now > req.deadline:
                req.time_out()
                continue
            token, logprob, top = seq.choose(logits[i - first])
            row.last = token
            self.stats.generated += 1
            if token in self.eos:
                seq.finish("stop", req)
            else:
                seq.append(token, logprob, top, self.tokenizer, req)
                if not seq.finish_reason and (
                    len(seq.tokens) >= req.sampling.max_tokens or row.length + 1 >= self.context
                ):
                    seq.finish("length", req)
        keep = [
            i for i, r in enumerate(self.rows) if not (r.seq.finish_reason or r.req.cancelled or r.req.failed)
        ]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._mask = self._mask[index]
        start = int((self._mask.sum(0) > 0).nonzero()[0])  # columns that are padding for every row left
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, start:], layer.values[index, :, start:]


def _context_length(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "max_position_embeddings", None) or 4096)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end is not None:
        ids.add(end)
    return ids
