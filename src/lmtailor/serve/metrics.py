"""The server's Prometheus metrics (GET /metrics): requests, tokens, latency, time to first token, the queue."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lmtailor.serve.pool import ModelPool


class Metrics:
    def __init__(self, pool: ModelPool):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lmtailor_requests", "API requests", ["endpoint", "model", "status"], registry=r
        )
        self.prompt_tokens = Counter("lmtailor_prompt_tokens", "prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter(
            "lmtailor_completion_tokens", "generated tokens", ["model"], registry=r
        )
        self.latency = Histogram("lmtailor_request_seconds", "request latency", ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))  # fmt: skip
        self.ttft = Histogram("lmtailor_time_to_first_token_seconds", "time to first token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        queue = Gauge("lmtailor_queue_depth", "requests waiting for a batch slot", registry=r)
        queue.set_function(lambda: sum(e.queued() for e in pool.engines()))
        running = Gauge("lmtailor_running_sequences", "sequences being generated", registry=r)
        running.set_function(lambda: sum(len(getattr(e, "rows", ())) for e in pool.engines()))
        loaded = Gauge("lmtailor_loaded_engines", "model weights loaded in memory", registry=r)
        loaded.set_function(lambda: len(pool.engines()))
