"""HTTP side: the ASGI middleware timing every request, and the `GET /metrics` route."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .families import (
    HTTP_DURATION,
    HTTP_IN_FLIGHT,
    HTTP_RESPONSES,
    HTTP_STREAMS_OPEN,
    METHODS,
    REGISTRY,
    UNMATCHED_ROUTE,
)

# nginx's code for a request the client gave up on before any response; counted as a 4xx.
CLIENT_CLOSED = 499


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/jobs/{job_id}`), or a fixed label when none matched."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(path, str) or not path:
        return UNMATCHED_ROUTE
    return path


def _init_route_series(app: Any) -> None:
    # Series for each route's documented success status exist before its first request.
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path_format", None)
        methods = getattr(route, "methods", None)
        if not path or not methods:
            continue
        status = str(getattr(route, "status_code", None) or 200)
        for method in methods:
            if method != "HEAD":
                HTTP_DURATION.labels(path, method, status)


class MetricsMiddleware:
    """Pure ASGI: passes every message straight through (no buffering), so streamed bodies flow
    as they are produced. Event streams leave the in-flight gauge when their headers go out and
    are counted as open streams until they end; their latency is time to headers."""

    def __init__(self, app: ASGIApp, owner: Any = None) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if self.owner is not None:
                _init_route_series(self.owner)
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        method = scope.get("method", "GET")
        if method not in METHODS:
            method = "other"
        start = time.perf_counter()
        status = 500
        recorded = started = streaming = False
        HTTP_IN_FLIGHT.inc()

        def record() -> None:
            nonlocal recorded
            recorded = True
            HTTP_DURATION.labels(route_template(scope), method, str(status)).observe(
                time.perf_counter() - start
            )
            HTTP_RESPONSES.labels(f"{status // 100}xx").inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, streaming, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                if _is_event_stream(message.get("headers", ())):
                    streaming = True
                    HTTP_IN_FLIGHT.dec()
                    HTTP_STREAMS_OPEN.inc()
                    record()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if not started:
                status = CLIENT_CLOSED  # the client left: not a server error
            raise
        finally:
            # Runs on success, on an exception and on cancellation.
            if streaming:
                HTTP_STREAMS_OPEN.dec()
            else:
                HTTP_IN_FLIGHT.dec()
            if not recorded:
                record()


def _is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"text/event-stream"
    return False


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition format 0.0.4, understood by every Prometheus version."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def render() -> bytes:
    """The exposition text, for callers outside HTTP (tests, debugging)."""
    return generate_latest(REGISTRY)


def install(app: Any) -> None:
    """Add the metrics middleware and `GET /metrics` to a FastAPI app; a second call is a no-op."""
    if getattr(app.state, "gatehouse_metrics_installed", False):
        return
    app.state.gatehouse_metrics_installed = True
    app.add_middleware(MetricsMiddleware, owner=app)
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        include_in_schema=False,
        response_class=Response,
        name="metrics",
    )
    _init_route_series(app)
