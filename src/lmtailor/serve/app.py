"""The server's app: the API's routers, its error handlers and body limit, /health, and the web console.

Each resource is a router with its own module in serve/routes/: models and generation (models.py), files,
fine-tuning and lmtailor's own jobs (files.py, fine_tuning.py, jobs.py), graders (graders.py) and what the console
needs beyond OpenAI's API (console.py). What they share (the app's parts as dependencies, the API key, errors,
pages, rows) is serve/shared.py. The web console (src/lmtailor/console) is served at / by the same app, as a client of this API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from lmtailor.serve.metrics import Metrics
from lmtailor.serve.pool import ModelPool
from lmtailor.serve.protocol import ApiError
from lmtailor.serve.routes import console, files, fine_tuning, graders, jobs
from lmtailor.serve.routes import models as generation
from lmtailor.serve.shared import GUARD, Parts, PoolDep, invalid

MAX_BODY = 8 * 2**20  # bytes of a request body
MAX_UPLOAD = 2 * 2**30  # bytes of an uploaded file (POST /v1/files)
STATIC = Path(__file__).resolve().parent.parent / "console" / "static"  # the web console's files


def create_app(pool: ModelPool, api_key: str | None = None, timeout: float = 600.0, max_body: int = MAX_BODY,
               store=None, worker=None, max_upload: int = MAX_UPLOAD) -> FastAPI:  # fmt: skip
    """The API over `pool`; with a store and a worker also the files and fine-tuning jobs API."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if worker is not None:
            await asyncio.to_thread(worker.stop)
        await asyncio.to_thread(pool.close)

    app = FastAPI(title="lmtailor", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.parts = Parts(pool=pool, metrics=Metrics(pool), store=store, worker=worker,
                            api_key=api_key, timeout=timeout, max_upload=max_upload)  # fmt: skip
    add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=max_body, uploads=max_upload)
    if store is not None:
        for router in (files.router, fine_tuning.router, jobs.router, console.router):
            app.include_router(router, dependencies=GUARD)
    app.include_router(graders.router, dependencies=GUARD)
    app.add_api_route("/health", health, methods=["GET"])
    app.include_router(generation.router, dependencies=GUARD)
    # the web console: static files that talk to the API above (src/lmtailor/console)
    app.mount("/console", StaticFiles(directory=STATIC), name="console")
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    return app


async def health(pool: PoolDep):
    return {"status": "ok", "engine": pool.engine_kind, "loaded": len(pool.engines())}


async def index():
    return FileResponse(STATIC / "index.html")


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: ours, FastAPI's and Starlette's, a failed validation and a bug."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        # a bug is still answered in OpenAI's error shape; the traceback goes to the server's log
        import traceback

        traceback.print_exception(e)
        body = ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        # what FastAPI and Starlette raise themselves (an unknown path, a method a path lacks, a body that cannot
        # be parsed) in OpenAI's shape too, never as {"detail": ...}
        where = f"{request.method} {request.url.path}"
        message = {404: f"Invalid URL ({where})", 405: f"Method not allowed ({where})"}.get(e.status_code)
        body = ApiError(e.status_code, message or f"{e.detail} ({where})").body()
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse(invalid(e).body(), 400)


class BodyLimit:
    """413 for request bodies over the limit, by header or by counting a chunked body. File uploads have
    their own, larger limit."""

    def __init__(self, app, limit: int, uploads: int = MAX_UPLOAD):
        self.app, self.default, self.uploads = app, limit, uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.uploads if scope["path"] == "/v1/files" else self.default
        length = dict(scope["headers"]).get(b"content-length")
        if length and length.isdigit() and int(length) > limit:
            return await self._reject(send, limit)
        seen, over, started = 0, False, False

        async def counted():
            # a chunked body has no length to check up front: count it, and past the limit tell the app the
            # client left (its parser then stops) and answer 413 here
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                return {"type": "http.disconnect"}
            return message

        async def sending(message):
            nonlocal started
            if over:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._reject(send, limit)

    async def _reject(self, send, limit: int):
        body = json.dumps(ApiError(413, f"request body over {limit} bytes", code="body_too_large").body())
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body.encode()})
