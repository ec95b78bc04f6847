"""Loading on first use, least-recently-used eviction under a memory budget, time limits, and `chat --url`."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest
from rich.console import Console

HI = [{"role": "user", "content": "Hello, who are you?"}]


def test_least_recently_used_model_is_unloaded_under_the_budget(lively_llama_dir, lively_qwen2_dir, tmp_path):
    from lmtailor.serve.pool import ModelPool

    a, b = str(lively_llama_dir.resolve()), str(lively_qwen2_dir.resolve())
    pool = ModelPool(home=tmp_path, models=[a, b], engine="transformers", dtype="float32", memory_budget=8e6)
    try:
        asyncio.run(pool.acquire(lively_llama_dir.name))
        assert list(pool.loaded) == [a] and pool.loaded[a].nbytes > 6e6  # fp32: ~1.6M parameters
        asyncio.run(pool.acquire(lively_qwen2_dir.name))
        assert list(pool.loaded) == [b]
        asyncio.run(pool.acquire(lively_llama_dir.name))
        assert list(pool.loaded) == [a]
    finally:
        pool.close()


def test_unknown_and_unloadable_models(tmp_path):
    from lmtailor.serve.pool import ModelNotFound, ModelPool

    pool = ModelPool(home=tmp_path, engine="transformers")
    with pytest.raises(ModelNotFound, match="does not exist"):
        pool.find("nope")
    assert "qwen2.5-7b-instruct" not in pool.offers()  # not downloaded: not offered offline


def test_a_request_past_its_time_limit_gets_504(start_server, lively_llama_dir, tmp_path):
    server = start_server([str(lively_llama_dir)], tmp_path, timeout=0.5, max_batch=2)
    try:
        with pytest.raises(openai.InternalServerError) as e:
            server.client().chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=5000)
        assert e.value.status_code == 504 and e.value.code == "timeout"
        engine = next(iter(server.pool.loaded.values())).engine
        deadline = time.monotonic() + 10
        while engine.rows and time.monotonic() < deadline:  # the engine drops the row at the end of its step
            time.sleep(0.01)
        assert not engine.rows and engine.stats.generated < 5000
    finally:
        server.stop()


def test_terminal_chat_through_a_server(start_server, lively_llama_dir, tmp_path):
    from lmtailor.chat import run_chat

    server = start_server([str(lively_llama_dir)], tmp_path / "home", api_key="k")
    try:
        expected = server.client(api_key="k").chat.completions.create(
            model=lively_llama_dir.name, messages=HI, max_tokens=10, temperature=0
        )
        lines = iter([HI[0]["content"], f"/save {tmp_path / 't.json'}", "/exit"])
        console = Console(record=True, width=200)
        history = run_chat(lively_llama_dir.name, max_tokens=10, console=console, input_fn=lambda _: next(lines),
                           url=server.url + "/v1", api_key="k")  # fmt: skip
        assert history[1] == {"role": "assistant", "content": expected.choices[0].message.content.strip()}
        assert json.loads((tmp_path / "t.json").read_text())["messages"] == history
        bad = iter(["hello", "/exit"])
        out = Console(record=True, width=200)
        assert run_chat(lively_llama_dir.name, console=out, input_fn=lambda _: next(bad), url=server.url + "/v1",
                        api_key="wrong") == []  # fmt: skip
        assert "401" in out.export_text()
    finally:
        server.stop()
