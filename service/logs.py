"""Structured logs: one JSON object per line on stderr, and a request-id + access-log middleware.

What is never logged: request or response bodies, query strings (they carry user text), headers
(Authorization, API keys), and any extra field whose name looks like a secret.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import re
import sys
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import CLIENT_CLOSED, route_template

ACCESS_LOGGER = "gatehouse.access"
REQUEST_ID_HEADER = "X-Request-ID"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode("ascii")  # ASGI header names are lower-case
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SECRET_KEY_RE = re.compile(r"(authorization|api[_-]?key|password|secret|token|cookie)", re.I)
_REDACTED = "[redacted]"
_MAX_PATH = 256

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class _RequestContext:
    __slots__ = ("request_id", "model")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.model: str | None = None


# A mutable holder, not plain values: a route may run in a copied context (threadpool, task
# group) and its `set_request_model` must still reach the middleware that writes the log line.
_current: contextvars.ContextVar[_RequestContext | None] = contextvars.ContextVar(
    "gatehouse_request", default=None
)


def set_request_model(name: str) -> None:
    """Name the model that served the current request; it appears in the access log line."""
    ctx = _current.get()
    if ctx is not None:
        ctx.model = name


def current_request_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx is not None else None


@functools.lru_cache(maxsize=1024)
def _is_secret(key: str) -> bool:
    return _SECRET_KEY_RE.search(key) is not None


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, then the record's extra fields; secret-looking keys are
    redacted whatever their value."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def _time(self, record: logging.LogRecord) -> str:
        # The seconds part changes once a second, not once a line: strftime only then.
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._stamp}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = current_request_id()
        if rid is not None:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key.startswith("_"):
                continue
            out[key] = _REDACTED if _is_secret(key) else value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        try:
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, ValueError):  # e.g. an int over 64 bits in an extra field
            return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    """Route every logger (uvicorn's included) through one JSON handler on stderr.

    Call before `uvicorn.run(..., log_config=None, access_log=False)`: uvicorn's own dictConfig
    would replace this, and its access log would duplicate ours."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def _request_id_from(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == _HEADER_KEY:
            try:
                candidate = value.decode("ascii")
            except UnicodeDecodeError:
                break
            if _REQUEST_ID_RE.match(candidate):
                return candidate
            break
    return os.urandom(16).hex()


class RequestLogMiddleware:
    """Pure ASGI. Honours a well-formed incoming X-Request-ID (else makes one), echoes it on the
    response, and logs one line per request when the response is over."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = _RequestContext(_request_id_from(scope))
        token = _current.set(ctx)
        scope.setdefault("state", {})["request_id"] = ctx.request_id
        start = time.perf_counter()
        status = 500
        started = False
        header = (_HEADER_KEY, ctx.request_id.encode("ascii"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k != _HEADER_KEY]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if not started:
                status = CLIENT_CLOSED
            raise
        finally:
            self._log(scope, ctx, status, time.perf_counter() - start)
            _current.reset(token)

    def _log(self, scope: Scope, ctx: _RequestContext, status: int, elapsed: float) -> None:
        state = scope.get("state") or {}
        model = ctx.model or state.get("model")
        level = _level(status)
        self.log.log(
            level,
            "request",
            extra={
                "method": scope.get("method", ""),
                "path": scope.get("path", "")[:_MAX_PATH],
                "route": route_template(scope),
                "status": status,
                "duration_ms": round(elapsed * 1000.0, 3),
                "model": model if isinstance(model, str) else None,
            },
        )


def _level(status: int) -> int:
    # A 503 is a refusal the server chose (not ready, queue full, shutting down), not a fault:
    # at error level it would page someone for every shed request.
    if status == 503:
        return logging.WARNING
    return logging.ERROR if status >= 500 else logging.INFO


def install(app: Any) -> None:
    """Add the request-id / access-log middleware to a FastAPI app; a second call is a no-op."""
    if getattr(app.state, "gatehouse_logs_installed", False):
        return
    app.state.gatehouse_logs_installed = True
    app.add_middleware(RequestLogMiddleware)
