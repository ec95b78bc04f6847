"""`lmtailor serve`: check the binding is safe, build the pool and the app, run uvicorn."""

from __future__ import annotations

import ipaddress
import os
import socket

from lmtailor.errors import LmtailorError


class UnsafeBinding(LmtailorError):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_binding(host: str, api_key: str | None) -> None:
    """Anything reachable from another machine must ask for a key."""
    if not api_key and not is_loopback(host):
        raise UnsafeBinding(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use your models. "
            "Pass --api-key KEY or set LMTAILOR_API_KEY (clients send `Authorization: Bearer KEY`), "
            "or bind to 127.0.0.1"
        )


def run_server(models=None, host="127.0.0.1", port=8000, api_key=None, engine="auto", tensor_parallel_size=1,
               db=None, workers=1, max_upload_mb=2048,
               max_batch=None, max_queue=64, timeout=600.0, memory_gb=None, dtype="auto", trust_remote_code=False, home=None,
               console=None, trust_graders=False) -> None:  # fmt: skip
    import uvicorn

    from lmtailor.graders import sandbox
    from lmtailor.platform.store import Store
    from lmtailor.platform.worker import Worker
    from lmtailor.serve.app import create_app
    from lmtailor.serve.pool import ModelPool

    check_binding(host, api_key)
    # its job processes inherit the operator's word
    os.environ[sandbox.TRUST_ENV] = "1" if trust_graders else "0"
    if console and (why := sandbox.unavailable()):
        console.print(
            f"python graders: {'run unsandboxed (--trust-graders)' if trust_graders else 'refused'}: {why}"
        )
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise LmtailorError(f"unknown --dtype {dtype!r}: use auto, bfloat16, float16 or float32")
    store = Store(home, db)
    worker = Worker(store, workers=workers)
    pool = ModelPool(home=home, models=models, store=store, engine=engine, max_batch=max_batch, max_queue=max_queue,
                     memory_budget=memory_gb * 2**30 if memory_gb else None,
                     tensor_parallel_size=tensor_parallel_size, trust_remote_code=trust_remote_code,
                     dtype=dtype)  # fmt: skip
    offers = pool.offers()
    if console:
        console.print(f"engine: {pool.engine_kind}; models: {', '.join(offers) or 'none'}")
        console.print(
            f"OpenAI-compatible API at http://{host}:{port}/v1" + (" (API key required)" if api_key else "")
        )
    app = create_app(
        pool,
        api_key=api_key,
        timeout=timeout,
        store=store,
        worker=worker,
        max_upload=int(max_upload_mb * 2**20),
    )
    worker.start()  # recovers jobs a killed server left running, then runs the queue
    uvicorn.run(app, host=host, port=port, log_level="warning")
