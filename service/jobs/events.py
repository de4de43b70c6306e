"""Fan-out of job events to Server-Sent Events streams.

Each stream gets its own bounded queue. A slow reader never holds up the manager: when its
queue is full the oldest event is dropped (progress is a snapshot, a newer one supersedes
it), but the final `end` event always gets through because it is delivered by closing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from models.json_values import json_safe

_QUEUE_SIZE = 64
KEEPALIVE_S = 15.0
POLL_S = 1.0  # without events for this long, a stream reads the job's record again
FINAL_STATES = ("succeeded", "failed", "cancelled")
_END = object()  # sentinel: the job ended, or the server is shutting down


def format_event(event: str, data: dict[str, Any]) -> bytes:
    body = json.dumps(json_safe(data), separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {body}\n\n".encode()


class EventHub:
    """Per-job subscriber queues; used from the event loop thread only."""

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[Any]]] = {}
        self._closed = False

    def subscribe(self, job_id: str) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue(_QUEUE_SIZE)
        if self._closed:
            q.put_nowait(_END)
        else:
            self._subs.setdefault(job_id, set()).add(q)
        return q

    def unsubscribe(self, job_id: str, q: asyncio.Queue[Any]) -> None:
        subs = self._subs.get(job_id)
        if subs is not None:
            subs.discard(q)
            if not subs:
                del self._subs[job_id]

    @staticmethod
    def _put(q: asyncio.Queue[Any], item: Any) -> None:
        while True:
            try:
                q.put_nowait(item)
                return
            except asyncio.QueueFull:
                q.get_nowait()  # drop the oldest snapshot

    def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        for q in self._subs.get(job_id, ()):
            self._put(q, (event, data))

    def end(self, job_id: str) -> None:
        """The job ended: every stream on it sends its final record and closes."""
        for q in self._subs.pop(job_id, ()):
            self._put(q, _END)

    def close(self) -> None:
        """Shutting down: end every stream so none holds the server open."""
        self._closed = True
        for job_id in list(self._subs):
            self.end(job_id)

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribers(self, job_id: str) -> int:
        return len(self._subs.get(job_id, ()))


async def stream(
    hub: EventHub,
    job_id: str,
    snapshot: Callable[[], Awaitable[dict[str, Any] | None]],
    poll_s: float = POLL_S,
) -> AsyncIterator[bytes]:
    """The SSE body: the job as it is now, then its events, then `end` with the final record.

    Subscribing before taking the snapshot means no event can fall between the two. When no
    event arrives for `poll_s` the stored record is read again: a job another server runs on
    this store sends no events here, so its progress and its end come from the database.
    """
    q = hub.subscribe(job_id)
    loop = asyncio.get_running_loop()
    try:
        job = await snapshot()
        if job is None:
            return
        yield format_event("status", job)
        if job["status"] in FINAL_STATES:
            yield format_event("end", job)
            return
        seen = (job["status"], job.get("progress"))
        quiet_since = loop.time()
        while True:
            try:
                item = await asyncio.wait_for(q.get(), poll_s)
            except asyncio.TimeoutError:
                job = await snapshot()
                if job is None or job["status"] in FINAL_STATES:
                    if job is not None:
                        yield format_event("end", job)
                    return
                if (job["status"], job.get("progress")) != seen:
                    seen = (job["status"], job.get("progress"))
                    yield format_event("status", job)
                elif loop.time() - quiet_since >= KEEPALIVE_S:
                    yield b": keepalive\n\n"  # lets proxies and clients see it is alive
                else:
                    continue
                quiet_since = loop.time()
                continue
            if item is _END:
                final = await snapshot()
                if final is not None:
                    yield format_event("end", final)
                return
            event, data = item
            if "progress" in data:
                seen = (data.get("status", seen[0]), data.get("progress"))
            quiet_since = loop.time()
            yield format_event(event, data)
    finally:
        hub.unsubscribe(job_id, q)


async def stream_stored(
    hub: EventHub,
    snapshot: Callable[[], Awaitable[dict[str, Any] | None]],
    last_event: Callable[[], Awaitable[int]],
    events_after: Callable[[int], Awaitable[list[tuple[int, str, dict[str, Any]]]]],
    poll_s: float,
) -> AsyncIterator[bytes]:
    """The SSE body for a job in a shared store, which any process may be running.

    The same shape as `stream`: the job now, its events as the store receives them, then
    `end` with the final record. The store is polled every `poll_s` (a few indexed reads a
    second per stream) and the record every `POLL_S`, which is how the end is seen; `hub`
    only tells that this server is shutting down.
    """
    loop = asyncio.get_running_loop()
    after = await last_event()  # before the snapshot: no event falls between the two
    job = await snapshot()
    if job is None:
        return
    yield format_event("status", job)
    if job["status"] in FINAL_STATES:
        yield format_event("end", job)
        return
    checked = quiet_since = loop.time()
    while not hub.closed:
        await asyncio.sleep(poll_s)
        for seq, event, data in await events_after(after):
            after = seq
            quiet_since = loop.time()
            yield format_event(event, data)
        now = loop.time()
        if now - checked >= POLL_S:
            checked = now
            job = await snapshot()
            if job is None or job["status"] in FINAL_STATES:
                if job is not None:
                    # Events stored after the read above and before the end.
                    for _, event, data in await events_after(after):
                        yield format_event(event, data)
                    yield format_event("end", job)
                return
        if now - quiet_since >= KEEPALIVE_S:
            quiet_since = now
            yield b": keepalive\n\n"
    final = await snapshot()
    if final is not None:
        yield format_event("end", final)
