"""The outermost ASGI layer of every request: request id, access log, request metrics, HEAD.

One layer instead of three stacked ones (logs.RequestLogMiddleware, metrics.MetricsMiddleware
and a HEAD adapter): each stacked layer costs a coroutine frame, a closure and a rewrapped
`send` per request, which on a request as cheap as a tiny model's `/predict` is a measurable
share of its CPU time. The behaviour is exactly that of the separate layers, which stay for
apps that install only one of them; the metrics part is the same code in both
(`metrics.http.Observation`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .metrics import route_template
from .metrics.exemplars import exemplar_labels, trace_id_from
from .metrics.families import (
    HTTP_DURATION,
    HTTP_RESPONSES,
    METHODS,
)
from .metrics.http import Observation, _init_route_series


class EdgeMiddleware:
    """Pure ASGI, streaming (nothing is buffered).

    - X-Request-ID: a well-formed incoming one is honoured, else one is made; echoed back.
    - One access-log line per request when its response is over (logs.RequestLogMiddleware).
    - Request latency, responses by class, in-flight and open event streams
      (metrics.MetricsMiddleware), with the request id and trace id as exemplar.
    - HEAD is served as GET by the app (RFC 9110: HEAD is GET without the body, which the
      HTTP server drops); logs and metrics still say HEAD.
    """

    def __init__(self, app: ASGIApp, owner: Any = None) -> None:
        self.app = app
        self.owner = owner
        self.log = logging.getLogger(logs.ACCESS_LOGGER)
        # (route, method, status) -> the latency and response-class series. `labels()` takes
        # a lock and builds a key on every call (~6 us each, two per request); the set of
        # keys is bounded (route templates, a fixed method set, status codes).
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _children(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        key = (route, method, status)
        found = self._series.get(key)
        if found is None:
            found = (
                HTTP_DURATION.labels(route, method, str(status)),
                HTTP_RESPONSES.labels(f"{status // 100}xx"),
            )
            self._series[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan" and self.owner is not None:
                _init_route_series(self.owner)
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method = scope["method"]
        ctx = logs._RequestContext(logs._request_id_from(scope))
        token = logs._current.set(ctx)
        scope.setdefault("state", {})["request_id"] = ctx.request_id
        inner = {**scope, "method": "GET"} if method == "HEAD" else scope
        header = (logs._HEADER_KEY, ctx.request_id.encode("ascii"))

        def record(status: int) -> None:
            label = method if method in METHODS else "other"
            latency, responses = self._children(route_template(inner), label, status)
            latency.observe(
                time.perf_counter() - start, exemplar_labels(ctx.request_id, trace_id_from(scope))
            )
            responses.inc()

        def with_request_id(message: Message) -> Message:
            raw = message.get("headers", ())
            headers = [(k, v) for k, v in raw if k != logs._HEADER_KEY]
            headers.append(header)
            return {**message, "headers": headers}

        observed = Observation(record, with_request_id)
        try:
            await observed.run(self.app, inner, receive, send)
        finally:
            self._log(inner, scope, ctx, observed.status, time.perf_counter() - start)
            logs._current.reset(token)

    def _log(self, inner: Scope, scope: Scope, ctx: Any, status: int, elapsed: float) -> None:
        level = logs._level(status)
        if not self.log.isEnabledFor(level):
            return
        state = inner.get("state") or {}
        model = ctx.model or state.get("model")
        # makeRecord + handle, not log(): log() walks the stack to find its caller's file and
        # line, which the JSON line never shows (a tenth of the access line's cost).
        record = self.log.makeRecord(
            self.log.name,
            level,
            __file__,
            0,
            "request",
            None,
            None,
            extra={
                "method": scope.get("method", ""),
                "path": scope.get("path", "")[: logs._MAX_PATH],
                "route": route_template(inner),
                "status": status,
                "duration_ms": round(elapsed * 1000.0, 3),
                "model": model if isinstance(model, str) else None,
            },
        )
        self.log.handle(record)


def install(app: Any) -> None:
    """The edge layer plus `GET /metrics`; later `logs.install` / `metrics.install` are no-ops."""
    from .metrics import http as metrics_http

    app.state.gatehouse_logs_installed = True
    app.state.gatehouse_metrics_installed = True
    metrics_http.add_route(app)
    app.add_middleware(EdgeMiddleware, owner=app)
