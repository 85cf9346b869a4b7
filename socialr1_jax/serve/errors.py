"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with a status.

The `openai` client raises its typed exceptions from the status (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413/422 APIStatusError, 500 InternalServerError) and
shows `message`; vLLM's server answers in the same shape.
"""

from __future__ import annotations

import json
import logging
from typing import Optional

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("socialr1_jax.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error",
         500: "internal_server_error", 503: "service_unavailable"}


class APIError(Exception):
    """A request we refuse (4xx) or could not serve (5xx), with what the client should see."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = int(status), message, param, code


def error_body(status: int, message: str, param=None, code=None) -> dict:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(request: Request, e: APIError) -> JSONResponse:
    """The response of an APIError, logged as one line (a 5xx's traceback is logged apart)."""
    rid = getattr(request.state, "request_id", "-")
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.request(request.url.path, e.status)
    log.warning("request %s %s %s -> %d %s", rid, request.method, request.url.path, e.status,
                e.message)
    return JSONResponse(error_body(e.status, e.message, e.param, e.code), status_code=e.status)


def _validation_message(e: RequestValidationError) -> tuple[str, Optional[str]]:
    """One line for pydantic's first complaint, and the field it is about."""
    first = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', '')})", None
    if kind == "extra_forbidden":
        return f"unknown field {param!r} (not part of this endpoint's request)", param
    if kind == "missing":
        return f"field {param!r} is required", param
    msg = first.get("msg", "invalid request")
    got = first.get("input")
    shown = json.dumps(got)[:80] if isinstance(got, (str, int, float, bool, type(None))) else ""
    return f"{param}: {msg}" + (f" (got {shown})" if shown else ""), param


def install(app) -> None:
    """Give the app OpenAI-shaped answers for our errors, pydantic's and Starlette's."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(request, e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message, param = _validation_message(e)
        return error_response(request, APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        message = "no such endpoint" if e.status_code == 404 else str(e.detail)
        return error_response(request, APIError(e.status_code, message))
