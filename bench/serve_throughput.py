"""Serving throughput: `lmtailor serve` (continuous batching) under 1, 4 and 8 concurrent streaming clients,
against a plain one-request-at-a-time transformers `generate` loop over the same model and prompts.

One run: the baseline loop first (in this process), then the server as a subprocess with the official
`openai` SDK as its clients. Reports generated tokens/s, time to first token and p50 / p95 latency for
each, and the ratio to the sequential loop.

    python bench/serve_throughput.py [--model smollm2-135m-instruct] [--requests 16] [--max-tokens 64]
                                     [--clients 1,4,8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "src" / "lmtailor" / "quickstart" / "data" / "test.jsonl"


def baseline(model_ref: str, prompts: list[list[dict]], max_tokens: int) -> dict:
    """What a user writes without a server: one `generate` call per request, in turn."""
    import torch

    from lmtailor.models.loading import load_model, load_tokenizer

    tok, model = load_tokenizer(model_ref), load_model(model_ref)
    latencies, tokens = [], 0
    start = time.perf_counter()
    for messages in prompts:
        t0 = time.perf_counter()
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        tokens += out.shape[1] - enc["input_ids"].shape[1]
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    return {
        "clients": 1,
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        **_spread(latencies),
    }


def served(url: str, model: str, prompts: list[list[dict]], max_tokens: int, clients: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)

    def one(messages):
        t0 = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                temperature=0, stream=True, stream_options={"include_usage": True})  # fmt: skip
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return time.perf_counter() - t0, first or 0.0, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(one, prompts))
    wall = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    return {"clients": clients, "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            **_spread([r[0] for r in results]), "ttft_p50_s": statistics.median(r[1] for r in results)}  # fmt: skip


def _spread(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {
        "latency_p50_s": statistics.median(ordered),
        "latency_p95_s": ordered[int(0.95 * (len(ordered) - 1))],
    }


def start_server(model: str, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "lmtailor.cli",
        "serve",
        "--model",
        model,
        "--port",
        str(port),
        "--max-batch",
        "8",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts = [r["messages"] for r in rows][: args.requests]
    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    base = baseline(args.model, prompts, args.max_tokens)
    print(f"sequential generate loop: {base['tokens_per_s']:.1f} tok/s", flush=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start_server(args.model, port)
    url = f"http://127.0.0.1:{port}/v1"
    model_id = Path(args.model).name if Path(args.model).is_dir() else args.model
    try:
        served(url, model_id, prompts[:2], 4, 1)  # warm-up: the first request loads the model
        runs = []
        for clients in [int(c) for c in args.clients.split(",")]:
            r = served(url, model_id, prompts, args.max_tokens, clients)
            r["ratio"] = r["tokens_per_s"] / base["tokens_per_s"]
            runs.append(r)
            print(f"lmtailor serve, {clients} clients: {r['tokens_per_s']:.1f} tok/s ({r['ratio']:.2f}x), "
                  f"ttft p50 {r['ttft_p50_s']:.2f} s, latency p50 {r['latency_p50_s']:.2f} s "
                  f"p95 {r['latency_p95_s']:.2f} s", flush=True)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)

    result = {"model": args.model, "requests": len(prompts), "max_tokens": args.max_tokens, "baseline": base,
              "served": runs, "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.processor()}"}  # fmt: skip
    print("| run | clients | tokens/s | ratio | TTFT p50 | latency p50 | latency p95 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| sequential `generate` | 1 | {base['tokens_per_s']:.1f} | 1.00x | – | "
          f"{base['latency_p50_s']:.2f} s | {base['latency_p95_s']:.2f} s |")  # fmt: skip
    for r in runs:
        print(f"| lmtailor serve | {r['clients']} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f}x | "
              f"{r['ttft_p50_s']:.2f} s | {r['latency_p50_s']:.2f} s | {r['latency_p95_s']:.2f} s |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
