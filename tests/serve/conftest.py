"""A real lmtailor server on 127.0.0.1 (uvicorn in a thread) serving tiny random models and a LoRA-tuned one."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest


class Server:
    def __init__(self, app, pool):
        import uvicorn

        self.pool = pool
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def client(self, api_key: str = "none", **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=120, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _start_server(models: list[str], home: Path, api_key: str | None = None, timeout: float = 600,
                  **pool_kw) -> Server:  # fmt: skip
    from lmtailor.serve.app import create_app
    from lmtailor.serve.pool import ModelPool

    pool = ModelPool(home=home, models=models, engine="transformers", dtype="float32", **pool_kw)
    return Server(create_app(pool, api_key=api_key, timeout=timeout), pool)


@pytest.fixture(scope="session")
def server_class():
    """Server(app, pool): run any app built by create_app on a free port of 127.0.0.1."""
    return Server


@pytest.fixture(scope="session")
def start_server():
    """start_server(models, home, api_key=None, timeout=600, **pool options) -> a running Server (fp32: exact greedy)."""
    return _start_server


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
def server(lively_llama_dir, lively_qwen2_dir, lora_tuned_dir, tmp_path_factory):
    s = _start_server([str(lively_llama_dir), str(lively_qwen2_dir), str(lora_tuned_dir)],
                     tmp_path_factory.mktemp("serve-home"), max_batch=8, max_queue=32)  # fmt: skip
    yield s
    s.stop()
