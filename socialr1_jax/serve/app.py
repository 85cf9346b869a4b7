"""The HTTP side: FastAPI routes of the OpenAI API over the batching worker.

    GET  /health               200 {"status": "ok"} once warm-up is done, 503 before
    GET  /v1/models            the one served model
    POST /v1/completions       text or token-id prompts; echo + logprobs score a prompt
    POST /v1/chat/completions  the checkpoint's chat template (chat_template_kwargs passed on)
    GET  /metrics              Prometheus text

Bodies are read with a size limit and parsed by the pydantic models of `schemas` (unknown
fields refused). With an API key every endpoint but /health needs `Authorization: Bearer KEY`.
Each request gets one log line (id, prompt and completion tokens, queue and compute ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import threading
import time
import uuid
from typing import Callable, Optional

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sse_starlette.sse import EventSourceResponse

from socialr1_jax.serve import errors, handlers
from socialr1_jax.serve.batcher import Batcher
from socialr1_jax.serve.errors import APIError
from socialr1_jax.serve.metrics import Metrics
from socialr1_jax.serve.schemas import ChatRequest, CompletionRequest

log = logging.getLogger("socialr1_jax.serve")


@dataclasses.dataclass
class ServerConfig:
    """What the routes need to know besides the model."""

    model_name: str
    api_key: Optional[str] = None
    max_body_bytes: int = 1 << 20
    max_rows_per_request: int = 256
    batch_window_s: float = 0.01


class Server:
    """The loaded model, its worker and counters; `load` runs once, in a thread, at start-up."""

    def __init__(self, config: ServerConfig, load: Callable):
        self.config = config
        self._load = load  # () -> (engine, tokenizer); loads and warms up
        self.ready = threading.Event()
        self.failed: Optional[str] = None
        self.engine = self.tokenizer = self.batcher = None
        from socialr1_jax.serve.engine import CompileCounter

        self.metrics = Metrics(CompileCounter())
        self.started = int(time.time())

    def start(self) -> None:
        """Load and warm up in a thread; /health turns ready when done."""
        threading.Thread(target=self._start, name="serve-load", daemon=True).start()

    def _start(self) -> None:
        try:
            self.engine, self.tokenizer = self._load()
            self.batcher = Batcher(self.engine, window_s=self.config.batch_window_s,
                                   on_batch=self.metrics.batch)
            self.batcher.start()
        except Exception as e:
            self.failed = f"{type(e).__name__}: {e}"
            log.exception("loading the model failed")
            return
        self.metrics.compiles_at_ready = self.metrics.compiles.count
        self.ready.set()
        log.info("ready: serving %s (%d XLA programs compiled in warm-up)",
                 self.config.model_name, self.metrics.compiles.count)

    def stop(self) -> None:
        """Stop the worker (the running call finishes; queued requests get a 503)."""
        if self.batcher is not None:
            self.batcher.stop()

    def check_ready(self) -> None:
        """APIError 503 until warm-up is done."""
        if not self.ready.is_set():
            raise APIError(503, "the model is still loading" if not self.failed
                           else f"the model failed to load: {self.failed}")

    def check_model(self, name: str) -> None:
        """APIError 404 for a model name other than the served one."""
        if name != self.config.model_name:
            raise APIError(404, f"model {name!r} does not exist; this server serves "
                           f"{self.config.model_name!r}", param="model", code="model_not_found")


async def read_body(request: Request, schema, limit: int):
    """The body parsed into `schema`, refusing one over `limit` bytes (413) as it arrives."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body ({declared} bytes) is over the limit of {limit} "
                       "bytes (--max-body-bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes "
                           "(--max-body-bytes)")
        chunks.append(chunk)
    try:
        return schema.model_validate_json(b"".join(chunks))
    except pydantic.ValidationError as e:
        raise RequestValidationError(e.errors()) from None


def _authorized(server: Server, request: Request) -> bool:
    key = server.config.api_key
    if not key or request.url.path == "/health":
        return True
    given = request.headers.get("authorization", "")
    return given.startswith("Bearer ") and secrets.compare_digest(given[7:].strip(), key)


def create_app(server: Server) -> FastAPI:
    """The FastAPI application of `server` (its lifespan starts and stops the worker)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        server.start()
        yield
        await asyncio.to_thread(server.stop)

    app = FastAPI(title="socialr1_jax", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.metrics = server.metrics
    errors.install(app)

    @app.middleware("http")
    async def _auth_and_id(request: Request, call_next):
        request.state.request_id = f"req-{uuid.uuid4().hex[:12]}"
        if not _authorized(server, request):
            return errors.error_response(request, APIError(
                401, "a valid API key is required: send 'Authorization: Bearer KEY' (the "
                "server's --api-key)", code="invalid_api_key"))
        return await call_next(request)

    @app.get("/health")
    async def health():
        if server.ready.is_set():
            return {"status": "ok"}
        return JSONResponse({"status": "failed" if server.failed else "loading",
                             "detail": server.failed}, status_code=503)

    @app.get("/v1/models")
    async def models():
        entry = {"id": server.config.model_name, "object": "model", "created": server.started,
                 "owned_by": "socialr1_jax"}
        if server.engine is not None:
            entry["max_model_len"] = server.engine.max_model_len
        return {"object": "list", "data": [entry]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(server.metrics.render(),
                                 media_type="text/plain; version=0.0.4")

    async def _serve(request: Request, schema, handle):
        server.check_ready()
        body = await read_body(request, schema, server.config.max_body_bytes)
        server.check_model(body.model)
        result = await handle(server, body, request.state.request_id)
        if isinstance(result, dict):
            return JSONResponse(result)
        return EventSourceResponse(result, ping=15)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _serve(request, CompletionRequest, handlers.completions)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _serve(request, ChatRequest, handlers.chat)

    return app
