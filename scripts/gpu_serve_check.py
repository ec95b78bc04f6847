"""Run once on a GPU machine: does VllmEngine serve concurrent requests through lmtailor's event interface?

python scripts/gpu_serve_check.py                        # the embedded SmolLM2-135M-Instruct
python scripts/gpu_serve_check.py --model DIR --tensor-parallel-size 2

Prints `SKIP: reason` and exits 0 where vLLM cannot run (not installed: `pip install vllm`; no GPU);
exits 1 when a check fails. The tests cannot cover this file's path: they run where vLLM does not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give three tips for learning Python.",
    "What is 12 times 7?",
    "Name a primary colour.",
    "Explain what a GPU is in one sentence.",
    "What is the capital of France?",  # the same prompt twice: greedy answers must agree
    "Say hello in Spanish.",
]


def chat_ids(tokenizer, text: str) -> list[int]:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


async def generate(engine, text: str, timeout: float | None = None, **sampling) -> dict:
    """Submit one request and read its events to the end, as the API does."""
    from lmtailor.serve.requests import Delta, Done, Failed, Finished, Request, Sampling

    s = Sampling(**sampling)
    req = Request(chat_ids(engine.tokenizer, text), s, timeout=timeout)
    engine.submit(req)
    out = {"texts": [""] * s.n, "entries": [0] * s.n, "reasons": [None] * s.n, "done": None, "error": None}
    while True:
        event = await asyncio.wait_for(req.next(), 120)
        if isinstance(event, Delta):
            out["texts"][event.index] += event.text
            out["entries"][event.index] += len(event.logprobs)
        elif isinstance(event, Finished):
            out["reasons"][event.index] = event.reason
        elif isinstance(event, Failed):
            out["error"] = event.error
            return out
        elif isinstance(event, Done):
            out["done"] = event
            return out


def answered(r: dict) -> bool:
    return r["done"] is not None and all(t.strip() for t in r["texts"]) and None not in r["reasons"]


async def checks(engine) -> list[str]:
    from lmtailor.serve.requests import RequestTimeout

    failures = []
    start = time.monotonic()
    results = await asyncio.gather(*(generate(engine, p, temperature=0, max_tokens=64) for p in PROMPTS))
    wall = time.monotonic() - start
    for prompt, r in zip(PROMPTS, results, strict=True):
        print(f"--- {prompt}\n{r['texts'][0]!r} ({r['reasons'][0]}, {r['error'] or 'ok'})")
        if not answered(r):
            failures.append(f"greedy request {prompt!r}: {r}")
    tokens = sum(r["done"].completion_tokens for r in results if r["done"])
    print(
        f"{len(PROMPTS)} concurrent greedy requests: {tokens} tokens in {wall:.2f} s = {tokens / wall:.0f}/s"
    )
    if results[0]["texts"] != results[6]["texts"]:
        failures.append("the same prompt, greedy, gave two different texts")

    r = await generate(engine, PROMPTS[1], temperature=0.8, seed=1, n=2, logprobs=True, top_logprobs=3)
    if not answered(r) or sum(r["entries"]) != r["done"].completion_tokens:
        failures.append(f"n=2 with logprobs (one entry per token): {r}")
    r = await generate(engine, PROMPTS[2], temperature=0, n=2, stop=["\n"], max_tokens=48)
    if not answered(r) or r["texts"][0] != r["texts"][1] or any("\n" in t for t in r["texts"]):
        failures.append(f"greedy n=2 with a stop string: {r}")

    r = await generate(
        engine, "Write a long story about a dragon.", timeout=0.3, temperature=0, max_tokens=4000
    )
    if r["done"]:
        print("NOTE: the long request finished within 0.3 s; the time limit was not exercised")
    elif not isinstance(r["error"], RequestTimeout):
        failures.append(f"a request past its time limit should fail with RequestTimeout: {r}")
    await asyncio.sleep(0.5)
    if engine.busy():
        failures.append("the timed-out request is still in flight: it was not aborted")
    if not answered(await generate(engine, PROMPTS[3], temperature=0, max_tokens=16)):
        failures.append("the engine does not answer after a timeout")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (default: the embedded smollm2-135m-instruct)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()

    from lmtailor.serve.vllm_engine import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"SKIP: {reason}")
        return 0
    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import load_tokenizer
    from lmtailor.serve.vllm_engine import VllmEngine

    model = resolve(args.model or "smollm2-135m-instruct")
    start = time.monotonic()
    engine = VllmEngine(str(model.path), load_tokenizer(model), name=model.path.name,
                        tensor_parallel_size=args.tensor_parallel_size)  # fmt: skip
    print(f"vLLM engine for {model.path} ready in {time.monotonic() - start:.0f} s; context {engine.context}")
    try:
        failures = asyncio.run(checks(engine))
    finally:
        engine.stop()
    for f in failures:
        print(f"FAIL: {f}")
    print("FAILED" if failures else "OK: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":  # vLLM's spawned workers import this file again: nothing may run on import
    sys.exit(main())
