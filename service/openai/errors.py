"""OpenAI's error shape on `/v1/*`: `{"error": {"message", "type", "param", "code"}}`
(and, through the same middleware, the Open Inference Protocol's on `/v2/*`).

Every error on those paths, whoever raised it (a route, validation, the API key check, the
body-size guard that answers before any route runs, an unknown path), first becomes
Gatehouse's `{"status", "error", "message", "detail"}`; this middleware rewrites that body on
the way out, so one place decides the `/v1` shape and the rest of the API keeps its own.
OpenAI's SDKs read the message from it, and answer every invalid request with 400 (FastAPI's
422 for a body that fails validation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "/v1"


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    if status == 401:
        kind, code = "authentication_error", code or "invalid_api_key"
    elif status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _param(detail: Any) -> str | None:
    """The request field a Gatehouse error's `detail` names, if any."""
    if isinstance(detail, dict) and isinstance(detail.get("param"), str):
        return detail["param"]
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # The top-level field: deeper parts of a location name pydantic's union branches.
        loc = [str(p) for p in detail[0].get("loc", ()) if p != "body"]
        return loc[0] if loc else None
    return None


def translate(status: int, body: bytes) -> tuple[int, bytes]:
    """Gatehouse's error body -> (status, OpenAI's error body)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or "message" not in parsed:
        return status, orjson.dumps(openai_error(status, body.decode(errors="replace")))
    message = str(parsed["message"])
    detail = parsed.get("detail")
    code = parsed.get("error") if isinstance(parsed.get("error"), str) else None
    if status == 404 and "model" in message:
        code = "model_not_found"
    if status == 422:
        status = 400
    return status, orjson.dumps(openai_error(status, message, _param(detail), code))


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
            status, body = self.translate(start["status"], b"".join(chunks))
            replaced = (b"content-length", b"content-type")
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
            headers.append((b"content-length", str(len(body)).encode()))
            headers.append((b"content-type", b"application/json"))
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rewrite)
