"""The OpenAI-compatible server through the official `openai` SDK, against a real server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

HI = [{"role": "user", "content": "Hello, who are you?"}]


def test_lists_the_models_it_serves(server, lively_llama_dir, lively_qwen2_dir, lora_tuned_dir):
    client = server.client()
    listed = {m.id for m in client.models.list()}
    assert listed == {lively_llama_dir.name, lively_qwen2_dir.name, lora_tuned_dir.name}
    one = client.models.retrieve(lively_qwen2_dir.name)
    assert one.id == lively_qwen2_dir.name and one.object == "model" and one.owned_by == "lmtailor"


def test_chat_answers_with_usage_and_finish_reason(server, lively_qwen2_dir):
    r = server.client().chat.completions.create(model=lively_qwen2_dir.name, messages=HI, max_tokens=12,
                                                temperature=0)  # fmt: skip
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_chat_reassembles_to_the_greedy_answer(server, lively_llama_dir):
    client = server.client()
    kw = dict(model=lively_llama_dir.name, messages=HI, max_tokens=24, temperature=0)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_gives_independent_choices(server, lively_llama_dir):
    r = server.client().chat.completions.create(model=lively_llama_dir.name, messages=HI, n=2, max_tokens=16,
                                                temperature=1.0, seed=7)  # fmt: skip
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert (
        r.choices[0].message.content != r.choices[1].message.content
    )  # 16 sampled tokens from a random model
    again = server.client().chat.completions.create(model=lively_llama_dir.name, messages=HI, n=2, max_tokens=16,
                                                    temperature=1.0, seed=7)  # fmt: skip
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]  # seeded


def test_stop_sequence_cuts_the_answer(server, lively_llama_dir):
    client = server.client()
    kw = dict(model=lively_llama_dir.name, messages=HI, max_tokens=30, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    assert len(full) > 12
    stop = full[8:11]
    cut = client.chat.completions.create(**kw, stop=[stop, "\u2603never"]).choices[0]
    assert cut.message.content == full[: full.index(stop)] and cut.finish_reason == "stop"
    streamed = client.chat.completions.create(**kw, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == full[: full.index(stop)]


def test_logprobs_follow_openai_shape(server, lively_llama_dir):
    r = server.client().chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=5,
                                                temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy picks the top token


def test_penalties_change_greedy_text(server, lively_llama_dir):
    client = server.client()
    kw = dict(model=lively_llama_dir.name, messages=HI, max_tokens=40, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    penalised = client.chat.completions.create(**kw, frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised.choices[0].message.content != plain


def test_completions_endpoint(server, lively_qwen2_dir):
    client = server.client()
    r = client.completions.create(model=lively_qwen2_dir.name, prompt="Once upon a time", max_tokens=6,
                                  temperature=0, echo=True, logprobs=2)  # fmt: skip
    assert r.object == "text_completion" and r.choices[0].text.startswith("Once upon a time")
    assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
    streamed = client.completions.create(model=lively_qwen2_dir.name, prompt="Once upon a time", max_tokens=6,
                                         temperature=0, stream=True)  # fmt: skip
    assert "Once upon a time" + "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_errors_have_openai_shape_and_status(server, lively_llama_dir):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=lively_llama_dir.name, messages=HI, temperature=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=lively_llama_dir.name, messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=lively_llama_dir.name, messages=HI, top_logprobs=2)
    raw = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                     headers={"content-type": "application/json"})  # fmt: skip
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(server.url + "/v1/chat/completions", content=b"x" * (9 * 2**20), timeout=30)
    assert big.status_code == 413 and "error" in big.json()
    chunked = httpx.post(server.url + "/v1/chat/completions", content=iter([b"x" * 2**20] * 9), timeout=30)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
    for prompt, said in (([], "empty"), ([1, 2, 10**9], "vocabulary"), ("", "empty")):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=lively_llama_dir.name, prompt=prompt, max_tokens=2)
        assert e.value.body["param"] == "prompt" and said in e.value.body["message"]
    # what Starlette answers itself, in the same shape: an unknown path, a method the path lacks
    for response, status in (
        (httpx.get(server.url + "/v1/nothing"), 404),
        (httpx.put(server.url + "/v1/models"), 405),
    ):
        assert response.status_code == status and set(response.json()) == {"error"}, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    # a temperature too small to divide by is greedy (the fuzzer found it a 500: logits / 1e-200 overflowed)
    said = [client.chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=8, temperature=t,
                                           top_p=0.7).choices[0].message.content for t in (1e-200, 0)]  # fmt: skip
    assert said[0] == said[1]
    # a seed beyond what torch's generator takes is the caller's mistake (the fuzzer found it a 500)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=lively_llama_dir.name, messages=HI, temperature=1, seed=2**64)
    assert e.value.body["param"] == "seed"
    # the bad requests failed alone: the engine still answers
    assert client.completions.create(model=lively_llama_dir.name, prompt=[1, 2], max_tokens=2).choices


def test_eight_concurrent_streams_each_get_their_own_answer(server, lively_llama_dir, lively_qwen2_dir):
    client = server.client()
    prompts = [(d.name, [{"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}])
               for i, d in enumerate([lively_llama_dir, lively_qwen2_dir] * 4)]  # fmt: skip
    kw = dict(max_tokens=20, temperature=0)
    alone = [
        client.chat.completions.create(model=m, messages=p, **kw).choices[0].message.content
        for m, p in prompts
    ]
    assert len(set(alone)) > 1

    def streamed(args):
        model, messages = args
        parts = client.chat.completions.create(model=model, messages=messages, stream=True, **kw)
        return "".join(c.choices[0].delta.content or "" for c in parts)

    with ThreadPoolExecutor(8) as ex:
        together = list(ex.map(streamed, prompts))
    assert together == alone
    engine = server.pool.loaded[str(lively_llama_dir.resolve())].engine
    assert engine.stats.steps > 0


def test_a_long_request_does_not_block_a_short_one(server, lively_llama_dir):
    client = server.client()
    events = []
    long_started = threading.Event()

    def long():
        stream = client.chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=300,
                                                temperature=0, stream=True)  # fmt: skip
        for i, _ in enumerate(stream):
            if i == 2:
                long_started.set()
        events.append("long done")

    t = threading.Thread(target=long)
    t.start()
    assert long_started.wait(60)
    client.chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=3, temperature=0)
    events.append("short done")
    t.join(120)
    assert events == ["short done", "long done"]


def test_a_client_that_disconnects_stops_its_generation(server, lively_qwen2_dir):
    body = {
        "model": lively_qwen2_dir.name,
        "messages": HI,
        "max_tokens": 5000,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
    engine = server.pool.loaded[str(lively_qwen2_dir.resolve())].engine
    deadline = time.monotonic() + 20
    while engine.rows and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.rows  # dropped long before 5000 tokens
    assert engine.stats.generated < 4000


def test_lora_models_share_their_base_weights(server, lively_llama_dir, lora_tuned_dir, tokenizer):
    """The tuned LoRA model runs as an adapter on the base's engine, and answers as its merged weights do."""
    client = server.client()
    kw = dict(messages=HI, max_tokens=12, temperature=0)
    base = client.chat.completions.create(model=lively_llama_dir.name, **kw).choices[0].message.content
    tuned = client.chat.completions.create(model=lora_tuned_dir.name, **kw).choices[0].message.content
    key = str(lively_llama_dir.resolve())
    assert key in server.pool.loaded and str(lora_tuned_dir.resolve()) not in server.pool.loaded
    assert lora_tuned_dir.name in server.pool.loaded[key].engine.adapters
    assert tuned != base

    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(lora_tuned_dir, dtype=torch.float32)
    enc = tokenizer.apply_chat_template(HI, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = merged.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tuned == tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_health_and_prometheus_metrics(server, lively_llama_dir):
    server.client().chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=2)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for name in ("lmtailor_requests_total", "lmtailor_completion_tokens_total", "lmtailor_request_seconds_bucket",
                 "lmtailor_queue_depth", "lmtailor_time_to_first_token_seconds_count"):  # fmt: skip
        assert name in text
    assert f'lmtailor_requests_total{{endpoint="chat",model="{lively_llama_dir.name}",status="200"}}' in text


@pytest.fixture(scope="module")
def guarded(lively_llama_dir, tmp_path_factory, start_server):
    """A second server with an API key and room for one running and one waiting request."""
    s = start_server([str(lively_llama_dir)], tmp_path_factory.mktemp("guarded-home"), api_key="s3cret",
                     max_batch=1, max_queue=1)  # fmt: skip
    yield s
    s.stop()


def test_api_key_is_required(guarded, lively_llama_dir):
    with pytest.raises(openai.AuthenticationError) as e:
        guarded.client().models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        guarded.client(api_key="s3cret-not").chat.completions.create(model=lively_llama_dir.name, messages=HI)
    assert httpx.get(guarded.url + "/metrics").status_code == 401
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert [m.id for m in guarded.client(api_key="s3cret").models.list()] == [lively_llama_dir.name]


def test_a_full_queue_answers_503(guarded, lively_llama_dir):
    client = guarded.client(api_key="s3cret")
    running = client.chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=400,
                                             temperature=0, stream=True)  # fmt: skip
    next(iter(running))  # the first request holds the only batch slot
    engine = guarded.pool.loaded[str(lively_llama_dir.resolve())].engine
    waiting = threading.Thread(
        target=lambda: client.chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=2)
    )
    waiting.start()
    deadline = time.monotonic() + 20
    while engine.queued() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.queued() == 1
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=lively_llama_dir.name, messages=HI, max_tokens=2)
    assert e.value.status_code == 503 and e.value.code == "overloaded"
    running.close()
    waiting.join(60)


def test_binding_beyond_loopback_needs_a_key():
    from typer.testing import CliRunner

    from lmtailor.cli import app
    from lmtailor.serve.run import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    result = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0", "--port", "1"], env={"LMTAILOR_API_KEY": ""}
    )
    assert result.exit_code == 1 and "--api-key" in result.output
