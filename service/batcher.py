"""Dynamic batching: concurrent requests for the same model become one forward pass.

The event loop only queues and dispatches; the batch function runs on one worker thread, one
batch at a time, so torch's own thread pool is never oversubscribed by concurrent batches.
Items are grouped by key (one model version) in arrival order, up to `max_batch_size` rows.

When to dispatch: a batch goes as soon as it is full. Otherwise, while there is evidence of
concurrency (the previous batch had several rows, or rows arrived while it ran), it waits for
the rows expected soon: as many as were in flight when the worker last finished (closed-loop
clients answered a moment ago send again within milliseconds), but never longer than
`max_batch_delay_ms` after both the worker was free and its oldest row had arrived. A forward
pass over 32 rows costs nearly as much as over 64 (reading the weights dominates), so one
full pass beats two half ones that chase each other. A lone client never waits.

The queue is bounded: past `max_queue` waiting items, or when the wait it would face is over
`max_wait_ms` (the rows ahead over the rate the worker clears them while backlogged), `submit`
raises `QueueFull` at once, with a retry estimate, instead of growing memory and latency
without limit: under overload the excess gets fast 503s, and what is admitted is answered in
time rather than after its client gave up. A request that is
cancelled (its client has gone) gives its slot back at once, and its rows are never computed.

Heavy items (`heavy=True`: a `/gates` trace is tens of forward passes' worth of work) run alone,
share the same bound, and have their own small one, `max_heavy` waiting or running. While
light rows wait, heavy items get at most `heavy_share` of the worker's time: after a heavy item
of s seconds, light batches run for s * (1 - share) / share seconds before the next one. With no
light work waiting they run straight away, so the worker never idles with work queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger("gatehouse.batcher")

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741
R = TypeVar("R")

# The most light work a heavy item can be held back for; with no light work waiting it runs
# at once anyway.
MAX_OWED_S = 5.0

# key, items of one batch, each item's queue wait (s), compute time of the batch (s)
BatchHook = Callable[[Any, list[Any], list[float], float], None]


class QueueFull(Exception):
    """The batch queue is at its bound; retry after `retry_after_s` seconds."""

    def __init__(self, queued: int, limit: int, retry_after_s: int, what: str = "requests") -> None:
        super().__init__(f"server busy: {queued} {what} queued (limit {limit}); retry later")
        self.queued = queued
        self.limit = limit
        self.retry_after_s = retry_after_s


class Departed(Exception):
    """The request's client has gone (its `gone` future completed): its rows were dropped."""


@dataclass(slots=True)
class _Pending:
    item: Any
    future: asyncio.Future[Any]
    heavy: bool = False
    queued: bool = True  # still counted in `_queued` (not yet taken, not cancelled)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class _Outcome:
    ok: bool
    value: Any  # the result, or the exception raised for this item


class DynamicBatcher(Generic[K, I, R]):
    """`await submit(key, item)` -> that item's own result from `run_batch(key, items)`.

    `run_batch` must return one result per item, in order; it runs on the worker thread.
    """

    def __init__(
        self,
        run_batch: Callable[[K, list[I]], Sequence[R]],
        *,
        max_batch_size: int = 64,
        max_batch_delay_ms: float = 2.0,
        max_queue: int = 1024,
        max_wait_ms: float = 0.0,
        max_heavy: int = 2,
        heavy_share: float = 0.1,
        executor: Executor | None = None,
        on_batch: BatchHook | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_batch_delay_ms < 0 or max_heavy < 1:
            raise ValueError("max_batch_size, max_queue, max_heavy >= 1, the delay >= 0")
        if not 0 < heavy_share <= 1:
            raise ValueError("heavy_share must be in (0, 1]")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_batch_delay_ms / 1000.0
        self.max_queue = max_queue
        self.max_wait_s = max_wait_ms / 1000.0  # 0: no bound on the wait
        self.max_heavy = max_heavy
        self.heavy_share = heavy_share
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="gatehouse-infer")
        self._on_batch = on_batch
        self._queues: dict[K, deque[_Pending]] = {}  # dict order is the round-robin order
        self._queued = 0  # items accepted and not yet handed to the worker (direct: not done)
        self._arrivals = 0
        self._concurrent = False
        self._expect = 1  # rows likely to arrive soon: what was in flight at the last batch
        self._target = max_batch_size  # rows the forming batch waits for
        self._idle_since = 0.0  # when the worker last became free
        self._batch_s = 0.0  # moving average of one batch's compute time, for Retry-After
        self._heavy: deque[tuple[K, _Pending]] = deque()
        self._heavy_count = 0  # heavy items waiting or running
        self._heavy_s = 0.0  # moving average of one heavy item's compute time
        self._owed_s = 0.0  # light work time owed before the next heavy item may run
        self._rows_per_s = 0.0  # moving average of rows cleared per second while rows waited
        self._last_done = 0.0  # when the last batch finished, if rows were waiting then
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def heavy(self) -> int:
        """Heavy items waiting or running."""
        return self._heavy_count

    async def submit(
        self, key: K, item: I, *, heavy: bool = False, gone: asyncio.Future[Any] | None = None
    ) -> R:
        return (await self.submit_many(key, [item], heavy=heavy, gone=gone))[0]

    async def submit_many(
        self,
        key: K,
        items: Sequence[I],
        *,
        heavy: bool = False,
        gone: asyncio.Future[Any] | None = None,
    ) -> list[R]:
        """Results for `items`, in order. The rows may land in different batches; heavy
        ones each run alone. When `gone` completes first (the client has left), the rows
        are dropped and `Departed` is raised."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        n = len(items)
        if n == 0:
            return []
        if gone is not None and gone.done():
            raise Departed
        if heavy and self._heavy_count + n > self.max_heavy:
            retry = self._heavy_retry_after()
            raise QueueFull(self._heavy_count, self.max_heavy, retry, "heavy requests")
        if self._queued + n > self.max_queue:
            raise QueueFull(self._queued, self.max_queue, self._retry_after())
        if not heavy and self._queued and self._expected_wait(n) > self.max_wait_s > 0:
            raise QueueFull(self._queued, self.max_queue, self._retry_after())
        if not self.enabled:
            return await self._direct(key, items, heavy, gone)

        loop = asyncio.get_running_loop()
        self._ensure_dispatcher(loop)
        pending = [_Pending(item, loop.create_future(), heavy) for item in items]
        self._queued += n
        self._arrivals += n
        assert self._wake is not None and self._full is not None
        if heavy:
            self._heavy_count += n
            self._heavy.extend((key, p) for p in pending)
        else:
            queue = self._queues.setdefault(key, deque())
            queue.extend(pending)
            if len(queue) >= self._target:
                self._full.set()
        self._wake.set()
        # Cancelling this request, or its client leaving, cancels its futures: their slots
        # are free at once, the dispatcher skips them, and a batch already running drops
        # their rows instead of being waited for.
        if n == 1:
            waiter: asyncio.Future[Any] = pending[0].future
        else:
            waiter = asyncio.gather(*(p.future for p in pending))
        try:
            result = await _unless_gone(waiter, [p.future for p in pending], gone)
        finally:
            self._release(pending)
        return [result] if n == 1 else list(result)

    async def close(self) -> None:
        """Stop dispatching; waiting requests fail with RuntimeError."""
        task = self._task
        self.shutdown()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def shutdown(self) -> None:
        """`close` for synchronous callers: the dispatcher is cancelled, not awaited."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._fail_pending("server shutting down")
        if self._own_executor:
            self._executor.shutdown(wait=True, cancel_futures=True)

    # -- internals ---------------------------------------------------------------------

    def _expected_wait(self, n: int) -> float:
        """How long rows joining now would wait: the rows ahead of them over the rate the
        worker has cleared rows while others waited (event loop time included)."""
        return (self._queued + n) / self._rows_per_s if self._rows_per_s > 0 else 0.0

    def _note_cycle(self, compute_s: float, rows: int) -> None:
        now = time.perf_counter()
        # Only a backlogged worker's pace says how fast the queue drains; idle gaps do not, and
        # a batch that found no queue behind it took just its compute time. A batch short of
        # full says little: a pass over 64 rows costs about what one over 3 does, so the
        # pace of small batches (a cold start, a few clients) would refuse a burst the worker
        # clears in a few full passes. The pace is learnt from full batches only.
        if rows >= self.max_batch_size:
            cycle = now - self._last_done if self._last_done else compute_s
            rate = rows / max(cycle, 1e-6)
            self._rows_per_s = (
                rate if self._rows_per_s == 0 else 0.8 * self._rows_per_s + 0.2 * rate
            )
        self._last_done = now if self._queued else 0.0

    def _retry_after(self) -> int:
        batches_ahead = math.ceil(self._queued / self.max_batch_size)
        return max(1, math.ceil(max(batches_ahead * self._batch_s, self._expected_wait(0))))

    def charge_heavy(self, seconds: float) -> None:
        """Count work done for a heavy item off the worker (encoding its answer) against the
        heavy share, so what heavy items cost in all stays within it."""
        owed = seconds * (1 - self.heavy_share) / self.heavy_share
        self._owed_s = min(self._owed_s + owed, MAX_OWED_S)

    def _heavy_retry_after(self) -> int:
        # Each heavy item ahead takes its run plus the light work owed after it.
        ahead = self._heavy_count * self._heavy_s / self.heavy_share
        return max(1, math.ceil(max(self._owed_s, 0.0) + ahead))

    def _release(self, pending: list[_Pending]) -> None:
        """Its submitter is done with these items: those still queued (it was cancelled, or
        its client left) free their slots now, and heavy ones their heavy slot."""
        for p in pending:
            if p.queued:
                p.queued = False
                self._queued -= 1
            if p.heavy:
                self._heavy_count -= 1

    def _note_batch_time(self, seconds: float) -> None:
        """Moving average of one batch's compute time, for Retry-After."""
        self._batch_s = seconds if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * seconds

    def _ensure_dispatcher(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._full = asyncio.Event()
            self._task = loop.create_task(self._dispatch(), name="gatehouse-batcher")
            self._task.add_done_callback(self._dispatcher_done)

    def _dispatcher_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the dispatcher must not leave requests waiting forever: fail them now
        # (the next submit starts a fresh dispatcher).
        log.error("batch dispatcher died", exc_info=task.exception())
        self._fail_pending("batch dispatcher failed")

    def _fail_pending(self, message: str) -> None:
        waiting = [p for queue in self._queues.values() for p in queue]
        waiting += [p for _, p in self._heavy]
        for p in waiting:
            if p.queued:
                p.queued = False
                self._queued -= 1
            if not p.future.done():
                p.future.set_exception(RuntimeError(message))
        self._queues.clear()
        self._heavy.clear()

    async def _dispatch(self) -> None:
        assert self._wake is not None and self._full is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queues and not self._heavy:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._heavy and (not self._queues or self._owed_s <= 0):
                await self._run_heavy(loop)
                continue
            key = next(iter(self._queues))
            queue = self._queues[key]
            if self._concurrent and self.max_delay_s > 0 and len(queue) < self.max_batch_size:
                await self._fill(queue)
            batch = self._take(key)
            if not batch:
                continue
            arrivals = self._arrivals
            try:
                outcomes, started, compute_s = await loop.run_in_executor(
                    self._executor, self._run_guarded, key, [p.item for p in batch]
                )
            except Exception as e:  # the executor itself failed (shut down)
                outcomes, started, compute_s = [_Outcome(False, e)] * len(batch), 0.0, 0.0
            self._concurrent = len(batch) > 1 or self._arrivals > arrivals
            # Closed-loop clients answered now send their next request within milliseconds.
            self._expect = min(self.max_batch_size, len(batch) + self._queued)
            self._idle_since = time.perf_counter()
            self._note_batch_time(compute_s)
            self._owed_s -= compute_s
            self._note_cycle(compute_s, len(batch))
            self._settle(key, batch, outcomes, started, compute_s)

    async def _run_heavy(self, loop: asyncio.AbstractEventLoop) -> None:
        key, p = self._heavy.popleft()
        p.queued = False
        self._queued -= 1
        if p.future.done():
            return  # cancelled while it waited
        try:
            outcomes, started, compute_s = await loop.run_in_executor(
                self._executor, self._run_guarded, key, [p.item]
            )
        except Exception as e:  # the executor itself failed (shut down)
            outcomes, started, compute_s = [_Outcome(False, e)], 0.0, 0.0
        self._idle_since = time.perf_counter()
        self._heavy_s = compute_s if self._heavy_s == 0 else 0.8 * self._heavy_s + 0.2 * compute_s
        # Light work owed for this run; not carried past one run's worth, so a burst of
        # heavy items while nothing else waited does not starve them later.
        owed = compute_s * (1 - self.heavy_share) / self.heavy_share
        self._owed_s = min(max(self._owed_s, 0.0) + owed, max(2 * owed, MAX_OWED_S))
        if self._last_done:  # a heavy run is not the light rows' pace: it has its own share
            self._last_done = time.perf_counter()
        self._settle(key, [p], outcomes, started, compute_s)

    def _settle(
        self,
        key: K,
        batch: list[_Pending],
        outcomes: list[_Outcome],
        started: float,
        compute_s: float,
    ) -> None:
        for p, outcome in zip(batch, outcomes, strict=True):
            if p.future.done():
                continue  # its request was cancelled meanwhile
            if outcome.ok:
                p.future.set_result(outcome.value)
            else:
                p.future.set_exception(outcome.value)
        self._report(key, [p.item for p in batch], [started - p.enqueued for p in batch], compute_s)

    async def _fill(self, queue: deque[_Pending]) -> None:
        """Hold a partial batch until the rows expected soon have arrived (as many as were in
        flight when the worker last finished), or `max_batch_delay_ms` after the worker was
        free and the oldest row was there. Forward passes cost nearly the same at 32 rows as
        at 64 (reading the weights dominates), so one full pass beats two half ones."""
        assert self._full is not None
        self._target = min(self.max_batch_size, max(2, self._expect))
        deadline = max(queue[0].enqueued, self._idle_since) + self.max_delay_s
        try:
            while len(queue) < self._target:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    return
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), remaining)
                except asyncio.TimeoutError:
                    return
        finally:
            self._target = self.max_batch_size

    def _take(self, key: K) -> list[_Pending]:
        queue = self._queues.pop(key)
        batch: list[_Pending] = []
        while queue and len(batch) < self.max_batch_size:
            p = queue.popleft()
            if p.queued:
                p.queued = False
                self._queued -= 1
            if not p.future.done():
                batch.append(p)
        if queue:
            self._queues[key] = queue  # re-inserted last: the next key gets the next turn
        return batch

    def _run_guarded(self, key: K, items: list[I]) -> tuple[list[_Outcome], float, float]:
        """Worker thread. A batch that fails is retried row by row, so one bad row fails
        alone instead of taking its batch-mates down with it."""
        started = time.perf_counter()
        try:
            results = list(self._run_batch(key, items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function gave {len(results)} results for {len(items)}")
            outcomes = [_Outcome(True, r) for r in results]
        except Exception as e:
            if len(items) == 1:
                outcomes = [_Outcome(False, e)]
            else:
                outcomes = [self._run_one(key, item) for item in items]
        return outcomes, started, time.perf_counter() - started

    def _run_one(self, key: K, item: I) -> _Outcome:
        try:
            return _Outcome(True, self._run_batch(key, [item])[0])
        except Exception as e:
            return _Outcome(False, e)

    def _run_direct_rows(self, key: K, items: list[I]) -> tuple[list[_Outcome], float, float]:
        started = time.perf_counter()
        outcomes = [self._run_one(key, item) for item in items]
        return outcomes, started, time.perf_counter() - started

    async def _direct(
        self, key: K, items: Sequence[I], heavy: bool, gone: asyncio.Future[Any] | None
    ) -> list[R]:
        """Batching off: every row is its own forward pass, in submission order."""
        loop = asyncio.get_running_loop()
        n = len(items)
        self._queued += n
        self._heavy_count += n if heavy else 0
        enqueued = time.perf_counter()
        try:
            work = loop.run_in_executor(self._executor, self._run_direct_rows, key, list(items))
            outcomes, started, compute_s = await _unless_gone(work, [work], gone)
        finally:
            self._queued -= n
            self._heavy_count -= n if heavy else 0
        self._note_batch_time(compute_s / n)
        for i in range(n):
            self._report(key, [items[i]], [started - enqueued], compute_s / n)
        for outcome in outcomes:
            if not outcome.ok:
                raise outcome.value
        return [o.value for o in outcomes]

    def _report(self, key: K, items: list[Any], waits: list[float], compute_s: float) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(key, items, waits, compute_s)
        except Exception:  # metrics must never break serving
            log.exception("batch hook failed")


async def _unless_gone(
    waiter: asyncio.Future[Any],
    futures: list[asyncio.Future[Any]],
    gone: asyncio.Future[Any] | None,
) -> Any:
    """`await waiter`; if `gone` completes first, `futures` are cancelled and `Departed` is
    raised. A callback, not a second task: this is on every request's path."""
    if gone is None:
        return await waiter

    def drop(_: asyncio.Future[Any]) -> None:
        for f in futures:
            f.cancel()

    gone.add_done_callback(drop)
    try:
        return await waiter
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if gone.done() and not (task is not None and task.cancelling()):
            raise Departed from None
        raise
    finally:
        gone.remove_done_callback(drop)
