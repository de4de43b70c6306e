"""Request-size and content-type guard, applied before any route (and so any work) runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from .errors import error_body, error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON_TYPES = ("application/json",)
# Routes that take something other than JSON, and their own (larger) size limit.
_MULTIPART_PATHS = ("/train",)
# The longest a refused body is read for: a client that sends slower than this loses the answer.
_DRAIN_S = 2.0


class BodyLimitMiddleware:
    """413 for bodies over the limit (declared or streamed), 415 for non-JSON bodies.

    Counting the streamed bytes matters: a chunked upload has no Content-Length to check.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int, drain_bytes: int = 0
    ) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = _wanted_headers(scope["headers"])
        upload = scope["path"] in _MULTIPART_PATHS
        limit = self.max_upload if upload else self.max_body
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        ok_types = _JSON_TYPES + (("multipart/form-data",) if upload else ())
        if ctype and ctype not in ok_types and not ctype.endswith("+json"):
            want = " or ".join(ok_types)
            await error_response(415, f"content-type {ctype!r} not supported: send {want}")(
                scope, receive, send
            )
            return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                await error_response(400, "invalid Content-Length header")(scope, receive, send)
                return
            if too_big:
                await self._reject(scope, receive, send, limit, headers, int(declared))
                return
            if "transfer-encoding" not in headers:
                # The HTTP parser delivers exactly the declared length: nothing to count.
                await self.app(scope, receive, send)
                return

        seen = 0
        over = False
        replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Stop reading. The app sees a disconnect, never a complete body (a
                    # truncated one could still parse and start work), and whatever it answers
                    # is swapped for the 413 by send() below.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if not over:
                await send(message)
            elif not replaced:
                replaced = True
                await self._reject(scope, receive, send, limit, headers, None)

        await self.app(scope, counting_receive, guarded_send)

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: int,
        headers: dict[str, str],
        declared: int | None,
    ) -> None:
        """The 413, then the rest of the body read and dropped (up to a bound) before the
        connection closes: closing on unread bytes resets the connection, and a client still
        sending would get the reset instead of the answer."""
        body = orjson.dumps(error_body(413, f"request body over the limit of {limit} bytes"))
        start = {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        # A client that asked "100-continue" sends nothing now; one declaring more than the
        # bound would be read for nothing.
        waits = headers.get("expect", "").lower() == "100-continue"
        if not waits and (declared is None or declared <= self.drain_bytes):
            await _drain(receive, self.drain_bytes)
        await send({"type": "http.response.body", "body": b""})


_WANTED = frozenset((b"content-type", b"content-length", b"transfer-encoding", b"expect"))


def _wanted_headers(raw: Any) -> dict[str, str]:
    """The headers the guard reads."""
    return {
        k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw if k.lower() in _WANTED
    }


async def _drain(receive: Receive, budget: int) -> None:
    deadline = time.monotonic() + _DRAIN_S
    seen = 0
    while seen <= budget:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
