"""Soak: 32 concurrent streaming clients against `lmtailor serve` for five minutes, a fifth of them hanging up
mid-stream, with the server's memory at the start and the end.

One run, the embedded SmolLM2-135M-Instruct on loopback, the quickstart's test questions as prompts. First
one client alone streams `--alone` answers (the baseline); then `--clients` threads stream for `--seconds`,
each asking again as soon as it has its answer. Every fifth client closes its stream after a few chunks (a
user who stops reading). `--max-queue` is set low so that the server's designed refusal (503 `overloaded`,
back off and ask again) happens under the load too.

Reports: requests finished and cut, errors other than the designed 429/503 (any is a failure), p50 / p95
latency and time to first token against the client alone (the ratio), tokens/s, the server's resident memory
after warm-up, at the end and after the clients stop, and its queue and running sequences once the load is
gone (leaked sequences of cut streams would stay). Appends a JSON line to `--results`.

    python bench/soak.py [--clients 32] [--seconds 300] [--max-tokens 48] [--max-queue 8] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_loop import _cpu  # noqa: E402

MODEL = "smollm2-135m-instruct"
DATA = Path(__file__).resolve().parent.parent / "src" / "lmtailor" / "quickstart" / "data" / "test.jsonl"
DESIGNED = (429, 503)


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out = {}
    for name in ("lmtailor_queue_depth", "lmtailor_running_sequences"):
        out[name] = sum(float(m) for m in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))
    return out


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency, self.ttft, self.tokens = [], [], 0
        self.finished = self.cut = self.refused = 0
        self.errors: list[str] = []

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                if isinstance(getattr(self, k), list):
                    getattr(self, k).append(v)
                else:
                    setattr(self, k, getattr(self, k) + v)


def ask(client: openai.OpenAI, messages: list[dict], max_tokens: int, cut: bool, tally: Tally) -> None:
    """One streamed chat completion; `cut`: close the stream after three chunks."""
    t0 = time.perf_counter()
    try:
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                temperature=0.7, stream=True,
                                                stream_options={"include_usage": True})  # fmt: skip
        first, chunks, usage = None, 0, None
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
            chunks += 1
            usage = chunk.usage or usage
            if cut and chunks >= 3:
                stream.close()
                tally.add(cut=1)
                return
        if usage is None or first is None:
            tally.add(errors=f"a stream ended without its usage or any text ({chunks} chunks)")
            return
        tally.add(finished=1, tokens=usage.completion_tokens, latency=time.perf_counter() - t0, ttft=first)
    except openai.APIStatusError as e:
        if e.status_code in DESIGNED:
            tally.add(refused=1)
            time.sleep(0.5)  # what a client does with a 503: back off, ask again
        else:
            tally.add(errors=f"{e.status_code}: {e.message}")
    except (openai.APIConnectionError, httpx.HTTPError) as e:
        tally.add(errors=f"{type(e).__name__}: {e}")


def spread(xs: list[float]) -> dict:
    ordered = sorted(xs) or [0.0]
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-queue", type=int, default=8, help="the server's queue per model before 503")
    ap.add_argument("--alone", type=int, default=12, help="answers the lone client streams first")
    ap.add_argument("--workdir", default="soak-run")
    ap.add_argument("--results", default=None)
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    prompts = [
        json.loads(line)["messages"][:1] for line in DATA.read_text(encoding="utf-8").splitlines() if line
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lmtailor.cli", "serve", "--port", str(port), "--home", str(work / "home"),
           "--max-queue", str(args.max_queue)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: see {work / 'server.log'}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="soak", max_retries=0, timeout=600)
        alone = Tally()
        ask(client, prompts[0], args.max_tokens, False, Tally())  # loads the model
        for messages in prompts[: args.alone]:
            ask(client, messages, args.max_tokens, False, alone)
        start_mib = rss_mib(server.pid)
        print(f"alone: p50 {spread(alone.latency)} s; server {start_mib:.0f} MiB", flush=True)

        load, stop = Tally(), time.monotonic() + args.seconds

        def client_loop(i: int) -> None:
            rng, own = random.Random(i), openai.OpenAI(base_url=url + "/v1", api_key="soak", max_retries=0,
                                                       timeout=600)  # fmt: skip
            while time.monotonic() < stop:
                ask(own, rng.choice(prompts), args.max_tokens, i % 5 == 0, load)

        t0 = time.monotonic()
        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append(rss_mib(server.pid))
            time.sleep(5)
        wall = time.monotonic() - t0
        end_mib = samples[-1]
        time.sleep(3)
        idle = gauges(url)
        idle_mib = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(120)
    result = {
        "bench": "soak", "cpu": _cpu(), "cores": len(os.sched_getaffinity(0)), "clients": args.clients,
        "seconds": round(wall), "max_tokens": args.max_tokens, "max_queue": args.max_queue,
        "finished": load.finished, "cut": load.cut, "refused_503": load.refused, "errors": len(load.errors),
        "error_kinds": sorted(set(load.errors))[:10], "tokens_per_s": round(load.tokens / wall, 1),
        "alone_tokens_per_s": round(alone.tokens / sum(alone.latency), 1),
        "latency_s": spread(load.latency), "ttft_s": spread(load.ttft),
        "alone_latency_s": spread(alone.latency), "alone_ttft_s": spread(alone.ttft),
        "latency_ratio_p50": round(spread(load.latency)["p50"] / spread(alone.latency)["p50"], 1),
        "rss_mib": {"start": round(start_mib), "end": round(end_mib), "max": round(max(samples)),
                    "idle_after": round(idle_mib), "each_minute": [round(x) for x in samples[::12]]},
        "after_load": idle,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.results:
        with open(args.results, "a") as out:
            out.write(json.dumps(result) + "\n")
    if load.errors or any(idle.values()):
        raise SystemExit(f"{len(load.errors)} errors; after the load: {idle}")


if __name__ == "__main__":
    main()
