"""A real lmtailor server on 127.0.0.1 (uvicorn in a thread; tests/conftest.py's Server) serving tiny random models
and a LoRA-tuned one."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest


def _start_server(server_class, models: list[str], home: Path, api_key: str | None = None, timeout: float = 600,
                  **pool_kw):  # fmt: skip
    from lmtailor.serve.app import create_app
    from lmtailor.serve.pool import ModelPool

    pool = ModelPool(home=home, models=models, engine="transformers", dtype="float32", **pool_kw)
    return server_class(create_app(pool, api_key=api_key, timeout=timeout), pool)


@pytest.fixture(scope="session")
def start_server(server_class):
    """start_server(models, home, api_key=None, timeout=600, **pool options) -> a running Server (fp32: exact greedy)."""
    return functools.partial(_start_server, server_class)


@pytest.fixture(scope="session")
def lora_tuned_dir(lively_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tuned model folder: LoRA on the tiny Llama, a "." in its name as in ft:qwen2.5-… ids (adapter/ + merged weights + lmtailor.json)."""
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    root = tmp_path_factory.mktemp("lora-tuned")
    rows = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "William Shakespeare."),
            ("中国的首都是哪里？", "北京。"), ("What is the largest ocean?", "The Pacific Ocean.")] * 2  # fmt: skip
    data = root / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant",
                    "content": a}]}, ensure_ascii=False) + "\n" for q, a in rows), encoding="utf-8")  # fmt: skip
    spec = TrainSpec(model=str(lively_llama_dir), data=str(data), output=str(root / "tuned-v0.5-lora"), strategy="lora",
                     epochs=3, learning_rate=5e-2, batch_size=4, lora_r=8, neftune_alpha=0)  # fmt: skip
    run_sft(spec, home=root / "home")
    return root / "tuned-v0.5-lora"


@pytest.fixture(scope="module")
def server(lively_llama_dir, lively_qwen2_dir, lora_tuned_dir, tmp_path_factory, start_server):
    s = start_server([str(lively_llama_dir), str(lively_qwen2_dir), str(lora_tuned_dir)],
                     tmp_path_factory.mktemp("serve-home"), max_batch=8, max_queue=32)  # fmt: skip
    yield s
    s.stop()
