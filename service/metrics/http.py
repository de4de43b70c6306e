"""HTTP side: the ASGI middleware timing every request, and the `GET /metrics` route."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Depends
from prometheus_client import generate_latest
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import require_metrics_reader
from .exemplars import exemplar_labels, trace_id_from
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


class Observation:
    """One HTTP request's metrics while the app answers it: in flight until the answer ends,
    except an event stream, which leaves the in-flight gauge when its headers go out and counts
    as an open stream until it ends (its latency is time to headers). `record(status)` is
    called once; `status` is the answer's, 499 for a client that left before any, 500 for an
    app that failed before any."""

    __slots__ = ("status", "_record", "_rewrite", "_started", "_streaming", "_recorded")

    def __init__(
        self,
        record: Callable[[int], None],
        rewrite: Callable[[Message], Message] | None = None,
    ) -> None:
        self.status = 500
        self._record = record
        self._rewrite = rewrite  # applied to the response-start message
        self._started = self._streaming = self._recorded = False

    async def run(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        HTTP_IN_FLIGHT.inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._started = True
                self.status = int(message["status"])
                raw = message.get("headers", ())
                if self._rewrite is not None:
                    message = self._rewrite(message)
                if _is_event_stream(raw):
                    self._streaming = True
                    HTTP_IN_FLIGHT.dec()
                    HTTP_STREAMS_OPEN.inc()
                    self._done()
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if not self._started:
                self.status = CLIENT_CLOSED  # the client left: not a server error
            raise
        finally:
            # Runs on success, on an exception and on cancellation.
            if self._streaming:
                HTTP_STREAMS_OPEN.dec()
            else:
                HTTP_IN_FLIGHT.dec()
            if not self._recorded:
                self._done()

    def _done(self) -> None:
        self._recorded = True
        self._record(self.status)


class MetricsMiddleware:
    """Pure ASGI: passes every message straight through (no buffering), so streamed bodies flow
    as they are produced; each request is an `Observation`."""

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
        trace_id = trace_id_from(scope)

        def record(status: int) -> None:
            # The request id is set by the access-log middleware, which wraps this one.
            request_id = (scope.get("state") or {}).get("request_id")
            HTTP_DURATION.labels(route_template(scope), method, str(status)).observe(
                time.perf_counter() - start, exemplar_labels(request_id, trace_id)
            )
            HTTP_RESPONSES.labels(f"{status // 100}xx").inc()

        await Observation(record).run(self.app, scope, receive, send)


def _is_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"text/event-stream"
    return False


async def metrics_endpoint(request: Request) -> Response:
    """OpenMetrics (with exemplars) to a scraper whose `Accept` asks for it, as Prometheus does;
    the 0.0.4 text format, understood by every Prometheus version, to everyone else."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    # Off the event loop: rendering takes ~10-20 ms, which requests served meanwhile would wait.
    body = await asyncio.to_thread(encoder, REGISTRY)
    return Response(body, headers={"content-type": content_type})


def render() -> bytes:
    """The 0.0.4 exposition text, for callers outside HTTP (tests, debugging)."""
    return generate_latest(REGISTRY)


def install(app: Any) -> None:
    """Add the metrics middleware and `GET /metrics` to a FastAPI app; a second call is a no-op."""
    if getattr(app.state, "gatehouse_metrics_installed", False):
        return
    app.state.gatehouse_metrics_installed = True
    app.add_middleware(MetricsMiddleware, owner=app)
    add_route(app)


def add_route(app: Any) -> None:
    """`GET /metrics` alone, for apps whose request metrics come from another layer."""
    app.add_api_route(
        "/metrics",
        metrics_endpoint,
        methods=["GET"],
        include_in_schema=False,
        response_class=Response,
        name="metrics",
        dependencies=[Depends(require_metrics_reader)],
    )
    _init_route_series(app)
