"""Knowing when the client of a request has gone, so its work is dropped rather than done.

A router opts in with `route_class=WatchedRoute`. It records, for the request's handler, a
future that completes when the ASGI server reports `http.disconnect`. The
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
from collections.abc import Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from .errors import ApiError

# 499: the status nginx logs for a client that closed the connection before the answer.
CLIENT_GONE = 499


class _Watch:
    """One request's watch, started on first use: by then the body has been read (the engine
    runs after the request is parsed), so the watcher never takes a body message."""

    __slots__ = ("_receive", "_gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._gone: asyncio.Future[None] | None = None

    def gone(self) -> asyncio.Future[None]:
        if self._gone is None:
            loop = asyncio.get_running_loop()
            self._gone = gone = loop.create_future()
            # Ends by itself: receive() reports a disconnect once the response is complete.
            task = loop.create_task(_watch(self._receive, gone), name="gatehouse-client-watch")
            gone.add_done_callback(lambda _: task)  # referenced until it ends
        return self._gone


_current: ContextVar[_Watch | None] = ContextVar("gatehouse_client_watch", default=None)


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


@contextlib.contextmanager
def watching(receive: Receive) -> Iterator[None]:
    """The request whose messages `receive` gives is watched while the block runs."""
    token = _current.set(_Watch(receive))
    try:
        yield
    finally:
        # An app called in its client's own task (httpx's ASGITransport) must not leave this
        # request's watch behind for the next one.
        _current.reset(token)


class WatchedRoute(APIRoute):
    """A route whose requests are watched: until its handler returns, the engine drops the
    request's work if its client disconnects. A route class rather than a dependency with
    `yield`: FastAPI's machinery for those cost ~a third of `/predict`'s req/s at c=64."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def watched(request: Request) -> Response:
            with watching(request.receive):
                return await handler(request)

        return watched


def client_gone() -> asyncio.Future[None] | None:
    """The current request's departure future, or None where nobody watches (in-process use)."""
    watch = _current.get()
    return None if watch is None else watch.gone()
