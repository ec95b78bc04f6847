"""Which models the server offers, loading them on first use and evicting the least recently used.

A tuned LoRA model is served as an adapter on its base's engine, so ten tuned variants of one base cost
one copy of the base weights plus ten small adapters. Other models (full or freeze-tuned, catalog bases)
each get an engine of their own. Engines are evicted least-recently-used, never while they have work,
when loading another would pass the memory budget.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from lmtailor.errors import ModelError
from lmtailor.home import home_dir
from lmtailor.serve.requests import Overloaded


class ModelNotFound(LookupError):
    pass


@dataclass
class Offer:
    """A model the server can serve: its id, where its weights are, and the base it is an adapter of."""

    id: str
    ref: str  # what models.catalog.resolve understands
    created: int
    adapter: str | None = None  # adapter folder when served on a shared base
    base: str | None = None  # the base model's folder when `adapter` is set


@dataclass
class Loaded:
    engine: object
    nbytes: int
    used: float


class ModelPool:
    def __init__(self, home=None, models: list[str] | None = None, engine: str = "auto",
                 memory_budget: float | None = None, max_batch: int | None = None, max_queue: int = 64,
                 tensor_parallel_size: int = 1, trust_remote_code: bool = False, dtype: str = "auto",
                 store=None):  # fmt: skip
        self.home = home_dir(home)
        self.explicit = models or []
        self.engine_kind = pick_engine(engine)
        self.budget = memory_budget if memory_budget is not None else _default_budget()
        # sequences per step: a CPU saturates near 16; a GPU with vLLM wants hundreds
        self.max_batch = max_batch or (256 if self.engine_kind == "vllm" else 16)
        self.max_queue = max_queue
        self.tensor_parallel_size = tensor_parallel_size
        self.trust_remote_code = trust_remote_code
        self.dtype = dtype  # auto: bf16 where the hardware computes it natively
        self.store = store  # models made by fine-tuning jobs, served as soon as they exist
        self.loaded: dict[str, Loaded] = {}  # engine key (the weights' folder) -> engine
        self._lock = threading.Lock()
        self._offers: dict[str, Offer] = {}
        self._offers_at = 0.0
        self._keys: dict[str, str] = {}  # model id -> engine key

    # ---- what is offered ----------------------------------------------------------------------------------

    def offers(self) -> dict[str, Offer]:
        """Explicit --model refs if any were given, else the catalog models present here and the home's tuned
        models (re-read at most every two seconds); always every model and checkpoint a job has made."""
        return {**self._static_offers(), **self._job_offers()}

    def forget(self, model_id: str) -> None:
        """A deleted model: no longer offered (its adapter, if loaded, stays until the engine unloads)."""
        self._keys.pop(model_id, None)
        self._offers_at = 0.0

    def _job_offers(self) -> dict[str, Offer]:
        if self.store is None:
            return {}
        found = {}
        for m in self.store.models():
            adapter = str(self.store.path(m.adapter)) if m.adapter and m.base_path else None
            found[m.name] = Offer(m.name, str(self.store.path(m.path)), m.created_at, adapter,
                                  m.base_path if adapter else None)  # fmt: skip
        return found

    def _static_offers(self) -> dict[str, Offer]:
        if time.monotonic() - self._offers_at < 2 and self._offers:
            return self._offers
        found: dict[str, Offer] = {}
        if self.explicit:
            for ref in self.explicit:
                offer = self._offer(ref)
                found[offer.id] = offer
        else:
            from lmtailor.models.catalog import CATALOG

            for name, entry in CATALOG.items():
                if entry.hub_id is None or _in_hub_cache(entry.hub_id):
                    found[name] = Offer(name, name, 0)
            for card in sorted((self.home / "models").glob("*/lmtailor.json")):  # lmtailor train's models
                offer = self._offer(str(card.parent))
                found.setdefault(offer.id, offer)
        self._offers, self._offers_at = found, time.monotonic()
        return found

    def _offer(self, ref: str) -> Offer:
        path = Path(ref).expanduser()
        if not path.is_dir():
            return Offer(ref, ref, 0)
        created = int(path.stat().st_mtime)
        card_file = path / "lmtailor.json"
        if card_file.exists():
            card = json.loads(card_file.read_text(encoding="utf-8"))
            adapter = path / (card.get("adapter") or "")
            base = card.get("base_path")
            if (
                card.get("adapter")
                and (adapter / "adapter_config.json").exists()
                and base
                and Path(base).is_dir()
            ):
                return Offer(path.name, str(path), created, str(adapter), str(Path(base).resolve()))
        return Offer(path.name, str(path), created)

    def find(self, model_id: str) -> Offer:
        offers = self.offers()
        if model_id not in offers:
            self._offers_at = 0.0  # maybe it was just trained: look again once
            offers = self.offers()
        if model_id not in offers:
            raise ModelNotFound(
                f"The model `{model_id}` does not exist here. Available: {', '.join(offers) or 'none'}"
            )
        return offers[model_id]

    # ---- loading --------------------------------------------------------------------------------------------

    async def acquire(self, model_id: str):
        """(engine, adapter name or None) for a model id, loading it in a worker thread on first use."""
        offer = self.find(model_id)
        key = self._keys.get(offer.id)
        loaded = self.loaded.get(key) if key else None
        if loaded is None or (offer.adapter and offer.id not in loaded.engine.adapters):
            key = await asyncio.to_thread(self._load, offer)
            loaded = self.loaded[key]
        loaded.used = time.monotonic()
        return loaded.engine, (offer.id if offer.adapter else None)

    def _load(self, offer: Offer) -> str:
        """Load the weights `offer` runs on (once per folder: a catalog name and a tuned model's base_path
        that are the same folder share one engine), then its adapter if it has one."""
        from lmtailor.models.catalog import resolve

        with self._lock:
            weights = resolve(offer.base or offer.ref, self.home)
            key = self._keys[offer.id] = str(Path(weights.path).resolve())
            loaded = self.loaded.get(key)
            if loaded is None:
                estimate = _estimate_bytes(weights.path)
                # vLLM takes most of the GPU's memory for its KV cache: one vLLM engine at a time
                self._make_room(self.budget if self.engine_kind == "vllm" else estimate)
                engine = self._build(weights, offer.id if not offer.base else Path(offer.base).name)
                loaded = self.loaded[key] = Loaded(
                    engine, _engine_bytes(engine) or estimate, time.monotonic()
                )
            if offer.adapter and offer.id not in loaded.engine.adapters:
                try:
                    loaded.engine.add_adapter(offer.id, offer.adapter)
                except Exception as e:  # a broken adapter folder is the request's problem, not the server's
                    raise ModelError(f"cannot load the adapter of {offer.id} ({offer.adapter}): {e}") from e
            return key

    def _make_room(self, need: int) -> None:
        used = sum(x.nbytes for x in self.loaded.values())
        for key, x in sorted(self.loaded.items(), key=lambda kv: kv[1].used):
            if used + need <= self.budget:
                break
            if x.engine.busy():
                continue
            x.engine.stop()
            del self.loaded[key]
            used -= x.nbytes
        if used + need > self.budget and self.loaded:
            raise Overloaded(
                f"loading this model needs {need / 2**30:.1f} GiB and the memory budget "
                f"({self.budget / 2**30:.1f} GiB) is taken by models still answering; retry"
            )

    def _build(self, model, name: str):
        from lmtailor.models.loading import load_tokenizer

        tok = load_tokenizer(model, trust_remote_code=self.trust_remote_code)
        if self.engine_kind == "vllm":
            from lmtailor.serve.vllm_engine import VllmEngine

            return VllmEngine(str(model.path), tok, name=name, tensor_parallel_size=self.tensor_parallel_size,
                              max_batch=self.max_batch, max_queue=self.max_queue, dtype=self.dtype,
                              trust_remote_code=self.trust_remote_code)  # fmt: skip
        import torch

        from lmtailor.models.loading import load_model
        from lmtailor.serve.engine import TransformersEngine

        dtype = None if self.dtype == "auto" else getattr(torch, self.dtype)
        m = load_model(model, dtype=dtype, trust_remote_code=self.trust_remote_code, device_map=_device_map())
        m.eval()
        return TransformersEngine(m, tok, max_batch=self.max_batch, max_queue=self.max_queue, name=name)

    def engines(self) -> list:
        return [x.engine for x in self.loaded.values()]

    def close(self) -> None:
        for x in self.loaded.values():
            x.engine.stop()
        self.loaded.clear()


def pick_engine(choice: str) -> str:
    """`auto`: vLLM when it is installed and a GPU is present, else transformers."""
    if choice == "transformers":
        return choice
    from lmtailor.serve.vllm_engine import unavailable_reason

    reason = unavailable_reason()
    if choice == "vllm":
        if reason:
            raise ModelError(f"--engine vllm is unavailable here: {reason}. Use --engine transformers")
        return "vllm"
    if choice != "auto":
        raise ModelError(f"unknown engine {choice!r}: use auto, transformers or vllm")
    return "transformers" if reason else "vllm"


def _device_map():
    import torch

    return "auto" if torch.cuda.device_count() > 1 else None


def _default_budget() -> float:
    import psutil

    return psutil.virtual_memory().total * 0.6


def _estimate_bytes(folder) -> int:
    """Parameters × 2 bytes (bf16) from the safetensors headers, before anything is loaded."""
    from lmtailor.models.loading import _count_parameters

    return 2 * (_count_parameters(Path(folder)) or 0)


def _engine_bytes(engine) -> int:
    model = getattr(engine, "model", None)
    if model is None:
        return 0
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _in_hub_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False
