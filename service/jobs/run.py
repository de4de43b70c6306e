"""One job's run, from its worker's spawn to its exit: events become progress, the exit an
outcome (the protocol itself is in protocol.py).

Outcomes, in order of precedence: a version saved (succeeded, whatever else was asked); over
the time limit (failed); a cancel that was asked or reported (cancelled); a failure the
worker reported (failed); a checkpoint-and-stop asked at shutdown (back to the queue);
stopped by someone else's signal (back to the queue, counted as an interruption); gone
without a word (failed, with the end of its log).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..redact import without_paths
from ..registry import ModelRegistry
from ..settings import Settings
from . import protocol, spool
from .bounds import TrainBounds
from .db import FINAL, AsyncJobDB, JobRow
from .events import EventHub
from .process import WorkerProcess, describe_exit
from .store import STORE_ERRORS, JobStore, is_shared
from .views import job_view

log = logging.getLogger("gatehouse.jobs")

MAX_INTERRUPTIONS = 3  # unasked worker losses (server killed) before a job fails for good
CANCEL_GRACE_S = 5.0  # cooperative cancel first, then SIGKILL
DB_WRITE_INTERVAL_S = 1.0  # progress to SQLite at most this often; epochs and ends at once
_METRIC_KEYS = ("step", "total_steps", "epoch", "epochs", "loss", "ppl", "lr", "tokens_per_s")
_METRIC_KEYS += ("elapsed_s", "eta_s", "val_ppl")


def _write_end(db: JobStore, job_id: str, row: JobRow, values: dict[str, Any]) -> None:
    if row.model_version is not None:
        db.record_version(job_id, row.model_version)
    db.finish(job_id, row.status, **values)


class JobContext:
    """What every run shares: where jobs live, how long they may take, where they report."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry | None,
        bounds: TrainBounds,
        db: AsyncJobDB,
        hub: EventHub,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.bounds = bounds
        self.db = db
        self.hub = hub
        self.stopping = False  # set by the manager at shutdown
        # PostgreSQL: other replicas stream this process's job events from the store.
        self.shared = is_shared(settings.job_store)
        # Jobs that ended while their final state could not be written (a full or failing
        # disk under the database): shown, counted and refused as ended, written when the
        # database takes writes again (`write_pending`).
        self.pending: dict[str, tuple[JobRow, dict[str, Any]]] = {}

    def pending_row(self, job_id: str) -> JobRow | None:
        found = self.pending.get(job_id)
        return None if found is None else found[0]

    async def write_pending(self) -> None:
        """Retry writing each final state held in memory; keep those that still fail."""
        for job_id, (row, values) in list(self.pending.items()):
            try:
                await self.db.run(
                    functools.partial(_write_end, job_id=job_id, row=row, values=values)
                )
            except STORE_ERRORS as e:
                log.warning("job %s: its final state still cannot be written: %s", job_id, e)
                return
            self.pending.pop(job_id, None)
            log.info("job %s: final state %s written", job_id, row.status)
        await self.publish_counts()

    async def ended(self, job_id: str, status: str, seconds: float) -> None:
        """After a job reached a final state: metrics, files, streams."""
        metrics.job_finished(job_id, status, seconds)
        self.hub.end(job_id)
        await asyncio.to_thread(spool.remove, self.settings.model_dir, job_id)
        await self.publish_counts()

    async def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        """An event for this job's streams: here, and in a shared store for every replica's."""
        self.hub.publish(job_id, event, data)
        if self.shared:
            try:
                await self.db.run(lambda db: db.add_event(job_id, event, data))
            except STORE_ERRORS as e:  # a stream misses a snapshot; the record still has it
                log.warning("job %s: event %s not stored: %s", job_id, event, e)

    async def counts(self) -> dict[str, int]:
        """Jobs per state, the ones ended but not yet written counted as ended."""
        counts = await self.db.run(lambda db: db.counts())
        for row, _ in list(self.pending.values()):
            counts["running"] = max(0, counts["running"] - 1)
            counts[row.status] += 1
        return counts

    async def publish_counts(self) -> None:
        if self.db.is_open:
            metrics.set_jobs_by_state(await self.counts())


@dataclass(eq=False)
class Run:
    """A job that has a worker (or is about to get one), from spawn to exit; `row` holds its
    live progress."""

    ctx: JobContext
    row: JobRow
    worker: WorkerProcess | None = None
    started: float = field(default_factory=time.monotonic)
    accounted: float = field(default_factory=time.monotonic)  # run time written up to here
    requested: str | None = None  # "cancel" or "checkpoint", once asked
    timed_out: bool = False
    lease_lost: bool = False  # a shared store gave the job to another worker: hands off
    outcome: dict[str, Any] | None = None
    trained: bool = False  # a training step was reported: a checkpoint now would save work
    counted_step: int = 0  # step and session tokens already added to the metrics counters
    counted_tokens: int = 0
    last_write: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None

    def take_seconds(self) -> float:
        now = time.monotonic()
        spent, self.accounted = now - self.accounted, now
        return spent

    def total_seconds(self) -> float:
        """Running time over all attempts, this one included."""
        return self.row.run_seconds + time.monotonic() - self.started

    async def ask(self, command: str) -> None:
        self.requested = protocol.stronger(self.requested, command)
        if self.worker is not None:
            await self.worker.send(command)

    async def supervise(self) -> None:
        try:
            if not await self._spawn():
                return
            assert self.worker is not None
            if self.requested is not None:  # asked before the process existed
                await self.worker.send(self.requested)
            async for event in self.worker.events():
                try:
                    await self._on_event(event)
                except Exception:
                    log.exception("job %s: could not record event %s", self.row.id, event["event"])
            await self._settle(await self.worker.wait())
        except Exception:
            log.exception("job %s: supervision failed", self.row.id)
            if self.worker is not None:
                self.worker.kill()
            await self.finish("failed", error="the server lost track of this job")
        finally:
            if self.timer is not None:
                self.timer.cancel()

    async def _spawn(self) -> bool:
        """Start the worker; False (the job failed) when it cannot run at all."""
        row = self.row
        remaining = self.ctx.bounds.max_job_seconds - row.run_seconds
        job_dir = spool.job_dir(self.ctx.settings.model_dir, row.id)
        reason = None
        if remaining <= 0:
            reason = f"over the time limit of {self.ctx.bounds.max_job_seconds:.0f}s"
        elif not (job_dir / spool.SPEC_FILE).is_file():
            reason = "the job's files are missing from its directory in the model store"
        else:
            try:
                self.worker = await WorkerProcess.spawn(
                    job_dir,
                    self.ctx.settings.model_dir,
                    self.ctx.settings.device,
                    self.ctx.settings.job_threads,
                )
            except OSError as e:
                reason = f"could not start a worker process: {e}"
        if self.worker is None:
            await self.finish("failed", error=reason)
            return False
        self.timer = asyncio.get_running_loop().call_later(remaining, self._time_up)
        log.info(
            "job %s running in worker pid %d (attempt %d)", row.id, self.worker.pid, row.attempts
        )
        await self.ctx.publish(row.id, "status", job_view(row))
        return True

    def _time_up(self) -> None:
        self.timed_out = True
        loop = asyncio.get_running_loop()
        loop.create_task(self.ask(protocol.CANCEL))
        if self.worker is not None:
            loop.call_later(CANCEL_GRACE_S, self.worker.kill)

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind, row = event["event"], self.row
        if kind == protocol.STARTED:
            row.config = event.get("config")
            step = event.get("resumed_step")
            row.resumed_step = step if isinstance(step, int) else None
            self.counted_step = row.resumed_step or 0
            await self._write(config=row.config, resumed_step=row.resumed_step)
            if row.resumed_step is not None:
                log.info("job %s resumes from its checkpoint at step %d", row.id, step)
        elif kind == protocol.CORPUS:
            row.corpus = {**row.corpus, **(event.get("corpus") or {})}
            await self._write(corpus=row.corpus)
        elif kind == protocol.PROGRESS:
            await self._on_progress(event.get("info") or {})
        elif kind in protocol.ENDINGS:
            self.outcome = event

    async def _on_progress(self, info: dict[str, Any]) -> None:
        self.trained = True
        row = self.row
        row.metrics = {**row.metrics, **{k: info[k] for k in _METRIC_KEYS if k in info}}
        if isinstance(info.get("progress"), (int, float)):
            row.progress = float(info["progress"])
        epoch_end = info.get("event") == "epoch"
        if epoch_end:
            entry = {
                "epoch": info.get("epoch"),
                "step": info.get("step"),
                "train_loss": info.get("train_loss"),
                "val_ppl": info.get("val_ppl"),
                "tokens_per_s": info.get("tokens_per_s"),
                "seconds": info.get("elapsed_s"),
            }
            # A resumed run may repeat an epoch whose end was reported but not checkpointed.
            row.history = [h for h in row.history if (h.get("epoch") or 0) < entry["epoch"]]
            row.history.append(entry)
            await self.ctx.publish(row.id, "epoch", {"job_id": row.id, **entry})
        await self.ctx.publish(
            row.id,
            "progress",
            {"job_id": row.id, "status": "running", "progress": row.progress, **row.metrics},
        )
        step, tokens = info.get("step"), info.get("tokens")
        new_steps = step - self.counted_step if isinstance(step, int) else 0
        new_tokens = tokens - self.counted_tokens if isinstance(tokens, int) else 0
        self.counted_step += max(new_steps, 0)
        self.counted_tokens += max(new_tokens, 0)
        metrics.job_progress(
            row.id,
            row.name,
            row.arch,
            row.progress,
            row.metrics.get("loss"),
            row.metrics.get("val_ppl"),
            tokens=new_tokens,
            steps=new_steps,
        )
        if epoch_end or time.monotonic() - self.last_write >= DB_WRITE_INTERVAL_S:
            await self._write(progress=row.progress, metrics=row.metrics, history=row.history)

    async def _write(self, **values: Any) -> None:
        self.last_write = time.monotonic()
        spent = self.take_seconds()
        await self.ctx.db.run(
            lambda db: db.update_progress(self.row.id, add_run_seconds=spent, **values)
        )

    async def _settle(self, code: int) -> None:
        """The worker has exited: record how the job ended (or that it will resume)."""
        row, outcome = self.row, self.outcome or {}
        kind = outcome.get("event")
        if self.lease_lost:
            # Whoever holds the job now decides its end; a version saved here is found by
            # its job id and reported by that attempt.
            log.warning("job %s: this worker lost its lease; left to its new owner", row.id)
            return
        if kind == protocol.SUCCEEDED:
            try:
                version = await self.ctx.db.run(
                    lambda db: db.record_version(row.id, outcome["version"])
                )
            except STORE_ERRORS as e:  # finish() holds it until it can be written
                log.error("job %s: recording its version failed: %s", row.id, e)
                version = outcome["version"]
            row.model_version = version
            try:
                # Served before anyone can read "succeeded": a client may /predict at once.
                # (A `gatehouse worker` serves nothing: the replicas' store scans find it.)
                if self.ctx.registry is not None:
                    await asyncio.to_thread(self.ctx.registry.refresh)
            except Exception:  # the store watcher retries; the job itself did succeed
                log.exception("job %s: loading %s@%s failed", row.id, row.name, version)
            await self.finish(
                "succeeded",
                progress=1.0,
                metrics=outcome.get("metrics") or row.metrics,
                history=outcome.get("history") or row.history,
                note=f"saved {row.name}@{version}",
            )
        elif self.timed_out:
            limit = self.ctx.bounds.max_job_seconds
            error = f"over the time limit of {limit:.0f}s (GATEHOUSE_TRAIN_MAX_JOB_SECONDS)"
            await self.finish("failed", error=error)
        elif kind == protocol.CANCELLED or self.requested == protocol.CANCEL:
            await self.finish("cancelled")
        elif kind == protocol.FAILED:
            await self.finish("failed", error=str(outcome.get("error") or "failed"))
        elif self.requested == protocol.CHECKPOINT and self.ctx.stopping:
            note = "the server shut down while this job ran; resumes from its checkpoint"
            spent = self.take_seconds()
            await self.ctx.db.run(lambda db: db.requeue(row.id, note, spent))
        elif kind == protocol.STOPPED:
            spent = self.take_seconds()
            why = "the worker was stopped by a signal"
            status = await self.ctx.db.run(
                lambda db: db.interrupt(row.id, why, MAX_INTERRUPTIONS, spent)
            )
            if status in FINAL:
                await self.ctx.ended(row.id, status, self.total_seconds())
        else:
            assert self.worker is not None
            tail = self.worker.log_tail()
            log.error("job %s worker %s; log tail:\n%s", row.id, describe_exit(code), tail)
            last = tail.splitlines()[-1] if tail else ""
            error = f"the worker process {describe_exit(code)}" + (f": {last}" if last else "")
            await self.finish("failed", error=error)

    async def finish(self, status: str, **values: Any) -> None:
        """Record the job's end. Never raises: an end that cannot be written is held in
        memory (`JobContext.pending`) so the job still reads as ended and frees its slot."""
        spent = self.take_seconds()
        job_id = self.row.id
        error = values.get("error")
        if error:
            values["error"] = without_paths(str(error))  # clients read it; the log keeps all
        values["add_run_seconds"] = spent
        try:
            changed = await self.ctx.db.run(lambda db: db.finish(job_id, status, **values))
        except STORE_ERRORS as e:
            log.error("job %s ended %s but the database refused the write: %s", job_id, status, e)
            shown = {k: values[k] for k in ("progress", "metrics", "history") if k in values}
            row = dataclasses.replace(
                self.row,
                **shown,
                status=status,
                finished_at=time.time(),
                error=values.get("error"),
                note="this end is not yet written to the jobs database: its disk refused it",
            )
            self.ctx.pending[job_id] = (row, values)
            changed = True
        if changed:
            log.info("job %s %s%s", job_id, status, f": {error}" if error else "")
            await self.ctx.ended(job_id, status, self.total_seconds())
