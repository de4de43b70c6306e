"""The job manager: a bounded queue in the job store, scheduling, recovery, cancel, shutdown.

State lives in the store; this object adds what only a live process knows (the workers and
their latest progress, in `_runs`). `_lock` orders the decisions that race here: claiming
the next job for a worker, and cancelling.

With SQLite (the default) one server per model store runs its jobs, guarded by a file lock.
With PostgreSQL (`job_store` a URL) every replica accepts jobs and every process with
`run_jobs` claims them: leases (lease.py) tell a dead worker's job, a cancel reaches the
owner through the store, and the SSE streams read the events from the store.

Wiring: `manager = JobManager(settings, registry)`, `await manager.start()` in the lifespan,
`await manager.stop()` on the way out; `close_streams()` when shutdown begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

from ..errors import ApiError
from ..registry import ModelRegistry
from ..settings import Settings
from . import events, protocol, spool
from .bounds import TrainBounds
from .db import FINAL, AsyncJobDB, JobRow
from .lease import LeaseKeeper
from .run import CANCEL_GRACE_S, MAX_INTERRUPTIONS, JobContext, Run
from .store import describe, is_shared, new_worker_id, opener
from .views import job_view

log = logging.getLogger("gatehouse.jobs")

STOP_GRACE_S = 20.0  # on shutdown, time for workers to write their checkpoint
PENDING_RETRY_S = 2.0  # how often a job end the database refused is written again
CLAIM_POLL_S = 1.0  # shared store: jobs other replicas accepted are looked for this often
STREAM_POLL_S = 0.25  # shared store: how often an SSE stream reads new events
STAGING_AGE_SHARED_S = 3600.0  # shared store: another replica's upload may still be staging


class JobManager:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry | None,
        bounds: TrainBounds | None = None,
    ) -> None:
        self.settings = settings
        self.bounds = bounds or TrainBounds()
        self.model_dir = settings.model_dir
        self.hub = events.EventHub()
        self.db = AsyncJobDB()
        self.context = JobContext(settings, registry, self.bounds, self.db, self.hub)
        self._runs: dict[str, Run] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._retrier: asyncio.Task[None] | None = None
        self._owner: IO[bytes] | None = None
        self.shared = is_shared(settings.job_store)
        self.worker_id = new_worker_id()
        self.runs_jobs = False  # decided at start
        self._leases: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        await self.db.open_with(opener(self.settings, self.worker_id))
        if self.shared:
            await self._start_shared()
            return
        if self.settings.run_jobs:
            self._owner = await asyncio.to_thread(spool.own_queue, self.model_dir)
        self.runs_jobs = self._owner is not None
        if self._owner is None:
            # Recovering or running jobs here would fight the other server over them.
            log.error(
                "another server runs the training jobs of %s: this one only reports them",
                self.model_dir,
            )
            return
        recovered = await self.db.run(lambda db: db.recover(MAX_INTERRUPTIONS))
        for job_id, status in recovered.items():
            log.warning("job %s was running when the server stopped: now %s", job_id, status)
            if status in FINAL:
                await self.context.ended(job_id, status, 0.0)
        active = await self.db.run(lambda db: {r.id for r in db.list(("queued", "running"), -1)})
        removed = await asyncio.to_thread(spool.cleanup, self.model_dir, active)
        if removed:
            log.info("removed %d leftover job directories", len(removed))
        await self.context.publish_counts()
        self._scheduler = asyncio.create_task(self._schedule_loop(), name="jobs-scheduler")
        self._retrier = asyncio.create_task(self._retry_loop(), name="jobs-retry-writes")
        self._wake.set()

    async def _start_shared(self) -> None:
        """PostgreSQL: no file lock (many processes share the queue) and no recovery at start
        (a job left running may be another process's, alive): leases decide."""
        self.runs_jobs = self.settings.run_jobs
        log.info(
            "jobs in %s as %s%s",
            describe(self.settings.job_store),
            self.worker_id,
            "" if self.runs_jobs else " (accepting jobs, not running them)",
        )
        active = await self.db.run(lambda db: {r.id for r in db.list(("queued", "running"), -1)})
        removed = await asyncio.to_thread(
            spool.cleanup, self.model_dir, active, STAGING_AGE_SHARED_S
        )
        if removed:
            log.info("removed %d leftover job directories", len(removed))
        await self.context.publish_counts()
        keeper = LeaseKeeper(self.context, self._runs, self.settings.job_lease_s, self._wake.set)
        self._leases = asyncio.create_task(keeper.loop(), name="jobs-leases")
        self._retrier = asyncio.create_task(self._retry_loop(), name="jobs-retry-writes")
        if self.runs_jobs:
            self._scheduler = asyncio.create_task(self._schedule_loop(), name="jobs-scheduler")
            self._wake.set()

    async def stop(self) -> None:
        """Running workers checkpoint and exit; their jobs resume at the next start."""
        self.context.stopping = True
        self.hub.close()
        if self._scheduler is not None:
            # Not cancelled: a launch in progress completes, so its run is known below.
            self._wake.set()
            await asyncio.gather(self._scheduler, return_exceptions=True)
        runs = list(self._runs.values())
        for run in runs:
            await run.ask(protocol.CHECKPOINT)
            if not run.trained and run.worker is not None:
                # Still starting (importing torch, reading the corpus): nothing new to save.
                run.worker.kill()
        tasks = [r.task for r in runs if r.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            for run in runs:
                if run.task in late and run.worker is not None:
                    log.warning("job %s did not stop in %.0fs: killed", run.row.id, STOP_GRACE_S)
                    run.worker.kill()
            if late:
                await asyncio.wait(late, timeout=5.0)
        if self._leases is not None:  # kept until here: checkpointing workers keep their lease
            self._leases.cancel()
            await asyncio.gather(self._leases, return_exceptions=True)
        if self._retrier is not None:
            self._retrier.cancel()
            await asyncio.gather(self._retrier, return_exceptions=True)
            await self.context.write_pending()  # a last try; a restart recovers the rest
        await self.db.close()
        if self._owner is not None:
            self._owner.close()
            self._owner = None

    def close_streams(self) -> None:
        """End every event stream now (call when shutdown begins, before connections drain)."""
        self.hub.close()

    # ---- queries -----------------------------------------------------------------------
    def _view(self, row: JobRow) -> dict[str, Any]:
        ended = self.context.pending_row(row.id)
        if ended is not None and not row.final:
            return job_view(ended)
        run = self._runs.get(row.id)
        return job_view(row, run.row if run is not None else None)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        row = await self.db.run(lambda db: db.get(job_id))
        return None if row is None else self._view(row)

    async def list(self, statuses: list[str] | None, limit: int) -> list[dict[str, Any]]:
        asked = statuses
        if statuses and self.context.pending:  # held ends are "running" in the database
            asked = [*statuses, "running"]
        rows = await self.db.run(lambda db: db.list(asked, limit))
        views = [self._view(r) for r in rows]
        return [v for v in views if not statuses or v["status"] in statuses]

    def stream(self, job_id: str) -> AsyncIterator[bytes]:
        if self.shared:
            # Any process may run it: the events come from the store, whoever wrote them.
            return events.stream_stored(
                self.hub,
                lambda: self.get(job_id),
                lambda: self.db.run(lambda db: db.last_event(job_id)),
                lambda after: self.db.run(lambda db: db.events_after(job_id, after)),
                STREAM_POLL_S,
            )
        # The database is polled too: a job another server runs, or one whose end this
        # server could not announce, still ends its streams.
        return events.stream(self.hub, job_id, lambda: self.get(job_id))

    # ---- submission --------------------------------------------------------------------
    async def check_capacity(self) -> None:
        """429 when the queue is full: running jobs fill the slots, queued ones the queue."""
        if self.context.stopping:
            raise ApiError(503, "the server is shutting down", headers={"Retry-After": "10"})
        if self._owner is None and not self.shared:
            raise ApiError(503, "another server on this model store runs the training jobs")
        counts = await self.context.counts()
        capacity = self.settings.max_running_jobs + self.settings.max_queued_jobs
        # Shared: how many run at once is the sum over every worker, unknown here; the
        # bound is on the jobs waiting.
        full = (
            counts["queued"] >= self.settings.max_queued_jobs
            if self.shared
            else counts["queued"] + counts["running"] >= capacity
        )
        if full:
            etas = [r.row.metrics.get("eta_s") for r in self._runs.values()]
            eta = min((e for e in etas if isinstance(e, (int, float))), default=30.0)
            raise ApiError(
                429,
                f"the job queue is full ({counts['running']} running, {counts['queued']} "
                f"queued, at most {self.settings.max_queued_jobs} may wait): retry later",
                headers={"Retry-After": str(int(min(max(eta, 1.0), 3600.0)))},
            )

    async def submit(
        self,
        name: str,
        arch: str,
        request: dict[str, Any],
        train: dict[str, Any],
        stage: Callable[[spool.Staging], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Stage the corpus with `stage`, publish the job directory, then record the job.

        Only a complete job directory ever gets a record, so the 202 means the job is safe.
        """
        await self.check_capacity()
        job_id = secrets.token_hex(8)
        staging = await asyncio.to_thread(
            spool.Staging, self.model_dir, job_id, self.settings.max_corpus_bytes
        )
        try:
            source = await stage(staging)
            async with self._lock:
                await self.check_capacity()  # others may have filled it while this uploaded
                spec = {
                    "job_id": job_id,
                    "name": name,
                    "arch": arch,
                    "train": train,
                    "corpus": source,
                    "max_params": self.bounds.max_params,
                }
                await asyncio.to_thread(staging.commit, spec)
                try:
                    row = await self.db.run(
                        lambda db: db.insert(job_id, name, arch, request, source)
                    )
                except BaseException:
                    await asyncio.to_thread(spool.remove, self.model_dir, job_id)
                    raise
        except BaseException:
            await asyncio.to_thread(staging.discard)
            raise
        log.info("job %s queued: %s %s on %s", job_id, arch, name, source.get("description"))
        await self.context.publish_counts()
        self._wake.set()
        return self._view(row)

    # ---- cancel ------------------------------------------------------------------------
    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; returns its final record. 404 / 409 as fits."""
        async with self._lock:
            row = await self.db.run(lambda db: db.get(job_id))
            if row is None:
                raise ApiError(404, f"unknown job {job_id!r}")
            row = self.context.pending_row(job_id) or row
            if row.final:
                raise ApiError(409, f"job {job_id} already ended: {row.status}")
            run = self._runs.get(job_id)
            remote = run is None and row.status == "running" and self.shared
            if remote:
                # Another process runs it: its lease beat reads the request.
                if not await self.db.run(lambda db: db.request_cancel(job_id)):
                    raise ApiError(409, f"job {job_id} changed state meanwhile; look again")
            elif run is None and row.status == "running" and self._owner is None:
                raise ApiError(
                    503, f"job {job_id} runs on another server of this model store: cancel it there"
                )
            elif run is None:
                if await self.db.run(
                    lambda db: db.finish(job_id, "cancelled", only_from=("queued",))
                ):
                    await self.context.ended(job_id, "cancelled", 0.0)
                    return await self._must_get(job_id)
                raise ApiError(409, f"job {job_id} changed state meanwhile; look again")
            else:
                await run.ask(protocol.CANCEL)
        if run is None:  # asked of another process
            return await self._await_remote_cancel(job_id)
        try:
            await asyncio.wait_for(run.done.wait(), CANCEL_GRACE_S)
        except asyncio.TimeoutError:
            log.warning("job %s ignored cancel for %.0fs: killed", job_id, CANCEL_GRACE_S)
            if run.worker is not None:
                run.worker.kill()
            await run.done.wait()
        final = await self._must_get(job_id)
        if final["status"] != "cancelled":
            raise ApiError(409, f"job {job_id} ended as {final['status']} before it stopped")
        return final

    async def _await_remote_cancel(self, job_id: str) -> dict[str, Any]:
        """A cancel the owner reads at its next lease beat; wait for the job's end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.job_lease_s + CANCEL_GRACE_S + 5.0
        while True:
            final = await self._must_get(job_id)
            if final["status"] in FINAL:
                break
            if loop.time() > deadline:
                raise ApiError(
                    409,
                    f"job {job_id}: cancel asked, but its worker has not stopped yet; "
                    "it will stop when it reads the request (or when its lease runs out)",
                )
            await asyncio.sleep(STREAM_POLL_S)
        if final["status"] != "cancelled":
            raise ApiError(409, f"job {job_id} ended as {final['status']} before it stopped")
        return final

    async def _must_get(self, job_id: str) -> dict[str, Any]:
        found = await self.get(job_id)
        if found is None:
            raise ApiError(404, f"unknown job {job_id!r}")
        return found

    # ---- scheduling --------------------------------------------------------------------
    async def _retry_loop(self) -> None:
        while not self.context.stopping:
            await asyncio.sleep(PENDING_RETRY_S)
            if self.context.pending:
                try:
                    await self.context.write_pending()
                except Exception:
                    log.exception("writing held job ends failed")

    async def _schedule_loop(self) -> None:
        while not self.context.stopping:
            if self.shared:  # other replicas queue jobs without waking this one
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), CLAIM_POLL_S)
            else:
                await self._wake.wait()
            self._wake.clear()
            try:
                while len(self._runs) < self.settings.max_running_jobs:
                    if self.context.stopping or not await self._launch_next():
                        break
            except Exception:  # a bad row or a spawn failure must not end scheduling
                log.exception("job scheduling failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _launch_next(self) -> bool:
        async with self._lock:
            if self.context.stopping:
                return False
            claimed = await self.db.run(lambda db: db.claim())
            if claimed is None:
                return False
            run = Run(self.context, claimed)
            self._runs[claimed.id] = run
            run.task = asyncio.create_task(self._run(run), name=f"job-{claimed.id}")
        await self.context.publish_counts()
        return True

    async def _run(self, run: Run) -> None:
        try:
            await run.supervise()
        finally:
            self._runs.pop(run.row.id, None)
            run.done.set()
            await self.context.publish_counts()
            self._wake.set()
