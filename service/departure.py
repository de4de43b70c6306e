"""Knowing when the client of a request has gone, so its work is dropped rather than done.

A route opts in with the `watch_client` dependency (on its router). It records, for the
request's task, a future that completes when the ASGI server reports `http.disconnect`. The
engine hands that future (`client_gone()`) to the batcher with every submission: a request
whose client left while it was queued gives its slot back and is never computed, and one
whose batch is already running is not waited for (`ClientGone`, 499).

After the body has been read, an ASGI server's `receive()` only returns once the client has
disconnected or the response is complete, so the watcher costs one waiting task per request.
A watcher that sees the response complete first also completes the future, harmlessly: the
work it guards is done by then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar

from starlette.requests import Request
from starlette.types import Receive

from .errors import ApiError

# 499: the status nginx logs for a client that closed the connection before the answer.
CLIENT_GONE = 499

_gone: ContextVar[asyncio.Future[None] | None] = ContextVar("gatehouse_client_gone", default=None)


class ClientGone(ApiError):
    """The client closed the connection: nobody will read this request's answer."""

    def __init__(self) -> None:
        super().__init__(CLIENT_GONE, "client closed the connection before the answer")


async def _watch(receive: Receive, gone: asyncio.Future[None]) -> None:
    with contextlib.suppress(Exception):  # a receive that fails means the client is gone too
        while (await receive())["type"] != "http.disconnect":
            pass
    if not gone.done():
        gone.set_result(None)


async def watch_client(request: Request) -> AsyncIterator[None]:
    """FastAPI dependency: until the response is sent, the engine drops this request's work
    if its client disconnects."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    task = loop.create_task(_watch(request.receive, gone), name="gatehouse-client-watch")
    token = _gone.set(gone)
    try:
        yield
    finally:
        task.cancel()
        # An app called in its client's own task (httpx's ASGITransport) must not leave this
        # request's future behind for the next one.
        with contextlib.suppress(ValueError):
            _gone.reset(token)


def client_gone() -> asyncio.Future[None] | None:
    """The current request's departure future, or None where nobody watches (in-process use)."""
    return _gone.get()
