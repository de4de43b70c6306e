"""Error bodies in another protocol's shape under a path prefix (`/v1`: OpenAI's, `/v2`:
the Open Inference Protocol's), the rest of the API keeping Gatehouse's own.

Every error on those paths, whoever raised it (a route, validation, the API key check, the
body-size guard that answers before any route runs, an unknown path), first becomes
Gatehouse's `{"status", "error", "message", "detail"}`; this middleware rewrites that body
on the way out with the protocol's `translate`, so one place decides each shape.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Translate = Callable[[int, bytes], tuple[int, bytes]]


class ErrorShape:
    """ASGI middleware: error answers under `prefix` rewritten by `translate` (status and
    Gatehouse's error body in, status and the protocol's body out), the rest untouched."""

    def __init__(self, app: ASGIApp, prefix: str, translate: Translate) -> None:
        self.app = app
        self.prefix = prefix
        self.translate = translate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == self.prefix or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        await _shaped(self.app, self.translate, scope, receive, send)


class ErrorShapes:
    """Several prefixes in one layer: one ErrorShape each would stack a layer per protocol on
    every request, the ones under no prefix included."""

    def __init__(self, app: ASGIApp, shapes: dict[str, Translate]) -> None:
        self.app = app
        self.shapes = shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            for prefix, translate in self.shapes.items():
                if path == prefix or path.startswith(prefix + "/"):
                    await _shaped(self.app, translate, scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _shaped(
    app: ASGIApp, translate: Translate, scope: Scope, receive: Receive, send: Send
) -> None:
    start: Message | None = None
    chunks: list[bytes] = []

    async def rewrite(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await send(message)
            else:
                start = message  # held until the whole body is in
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status, body = translate(start["status"], b"".join(chunks))
        replaced = (b"content-length", b"content-type")
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"content-type", b"application/json"))
        await send({**start, "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    await app(scope, receive, rewrite)
