"""uvicorn's httptools protocol with the limits it lacks: header size, header and body read
deadlines, and a cap on open connections that sheds the slowest sockets first.

httptools buffers a header that never ends without bound, waits for a request head forever,
and accepts sockets until the process runs out of file descriptors. Each limit is checked
where the bytes arrive, before the parser or the app spends anything on them.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import error_body

# Descriptors kept back from the connection cap: the model store, sqlite, logs, the loop.
_FD_RESERVE = 128


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int = 32 * 1024  # request line + headers
    max_header_lines: int = 100
    header_timeout_s: float = 10.0  # from connect (or a request's first byte) to its last header
    body_idle_timeout_s: float = 30.0  # the longest silence while a request body is incomplete
    max_connections: int = 0  # 0: the open-file limit less a reserve
    linger_s: float = 1.0  # after refusing: close this much later, so the client sees the answer
    linger_bytes: int = 1 << 20  # dropped after a refusal (already in flight) before an abort


def connection_cap(requested: int) -> int:
    if requested > 0:
        return requested
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(16, soft - _FD_RESERVE)


class _HeaderLinesExceeded(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection. Phases: "head" (waiting for or reading a request head), "body" (the head
    is in, the body is not), "done" (the request is in; the app answers, or keep-alive waits)."""

    limits: EdgeLimits = EdgeLimits()
    cap: int = connection_cap(0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "head"
        # time.monotonic, not loop.time: uvloop's clock ticks in milliseconds, and sockets
        # opened in one burst must still be told apart by age.
        self._since = time.monotonic()
        self._head_bytes = 0
        self._header_lines = 0
        self._header_lines_exceeded = False
        self._last_data = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._discarding = False
        self._discarded = 0

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s)
        if len(self.connections) > self.cap:
            self._shed_one()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)

    def _shed_one(self) -> None:
        """Over the cap: close the connection that has waited longest without a complete
        request (a slow sender or an idle keep-alive); refuse this one if none has."""
        victim: GuardedHttpToolsProtocol | None = None
        for conn in self.connections:
            if conn is self or not isinstance(conn, GuardedHttpToolsProtocol):
                continue
            if not conn._evictable():
                continue
            if victim is None or conn._since < victim._since:
                victim = conn
        if victim is not None:
            victim._cancel_timer()
            victim.transport.abort()
        else:
            self._refuse(503, "too many open connections", close_now=True)

    def _evictable(self) -> bool:
        if self._discarding or self._phase == "head":
            return True
        return self._phase == "done" and (self.cycle is None or self.cycle.response_complete)

    # Bytes in

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            self._discarded += len(data)
            if self._discarded > self.limits.linger_bytes:
                self.transport.abort()
            return
        self._last_data = self.loop.time()
        if self._phase != "body":
            self._head_bytes += len(data)
        super().data_received(data)
        if self._phase != "body" and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, "request header fields too large")

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser failure with this; a callback that counted too many
        # header lines raises through the parser, so the failure is ours and gets its code.
        if self._header_lines_exceeded:
            self._refuse(431, "too many request header fields")
        else:
            self._refuse(400, msg)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "head"
        self._since = time.monotonic()
        self._header_lines = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout_s)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        if self._header_lines > self.limits.max_header_lines:
            self._header_lines_exceeded = True
            raise _HeaderLinesExceeded
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase = "body"
        self._arm(self.limits.body_idle_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = "done"
        # time.monotonic, not loop.time: uvloop's clock ticks in milliseconds, and sockets
        # opened in one burst must still be told apart by age.
        self._since = time.monotonic()
        self._head_bytes = 0
        self._cancel_timer()
        super().on_message_complete()

    # Deadlines

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, self._on_deadline)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        if self._discarding:
            self.transport.close()
        elif self._phase == "head":
            if self._head_bytes == 0 and self.cycle is None:
                self.transport.close()  # never said anything: nothing to answer
            else:
                self._refuse(408, "request header not received in time")
        elif self._phase == "body":
            # Rearming on every chunk would cost a timer per read; check the silence instead.
            silent = self.loop.time() - self._last_data
            if self.flow.read_paused:  # the app is not reading yet: the silence is ours
                self._last_data = self.loop.time()
                self._arm(self.limits.body_idle_timeout_s)
            elif silent < self.limits.body_idle_timeout_s:
                self._arm(self.limits.body_idle_timeout_s - silent)
            else:
                self._refuse(408, "request body not received in time")

    # Refusals

    def _refuse(self, status: int, message: str, close_now: bool = False) -> None:
        """Answer outside the app and close, a short while later: closing at once, with the
        client's bytes unread, would reset the connection before the answer reached it."""
        if self.transport.is_closing() or self._discarding:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True  # the app's next receive() says the client left
            cycle.message_event.set()
            if started:  # part of an answer is out: nothing valid can follow it
                self.transport.close()
                return
        body = orjson.dumps(error_body(status, message))
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: application/json\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        if close_now or not self.transport.can_write_eof():
            self.transport.close()
            return
        # FIN after the answer, then no more reading: a client still sending fills its own
        # buffers and blocks (costing neither side CPU) until the close, a second later, by
        # which time the answer is in its receive queue, where a reset cannot take it away.
        self.transport.write_eof()
        self.transport.pause_reading()
        self._discarding = True
        self._arm(self.limits.linger_s)


def protocol_class(limits: EdgeLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to these limits (uvicorn builds one instance per connection)."""
    return type(
        "GatehouseHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"limits": limits, "cap": connection_cap(limits.max_connections)},
    )
