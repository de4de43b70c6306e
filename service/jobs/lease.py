"""Leases on a shared (PostgreSQL) job store: renew ours, read cancels, requeue the dead's.

Every process on the store runs one `LeaseKeeper`. Each beat, a third of a lease apart, it
renews the lease of each job this process runs (and learns of a cancel asked on another
replica), stops a worker whose lease was taken from it (this process stalled past its lease
and the job went to someone else), and sends back to the queue every job whose owner let its
lease run out: a `kill -9`'d worker is noticed within one lease and a beat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from . import protocol
from .run import MAX_INTERRUPTIONS, JobContext, Run

log = logging.getLogger("gatehouse.jobs")

EVENTS_KEPT_S = 300.0  # a finished job's events are dropped this long after its end
PRUNE_EVERY = 100  # beats between two prunings of old events


class LeaseKeeper:
    def __init__(
        self, ctx: JobContext, runs: dict[str, Run], lease_s: float, wake: Callable[[], None]
    ) -> None:
        self.ctx = ctx
        self.runs = runs
        self.interval = max(0.2, lease_s / 3.0)
        self.wake = wake
        self.beats = 0

    async def loop(self) -> None:
        while not self.ctx.stopping:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except Exception:  # the store being away for a while must not end the loop
                log.exception("job lease upkeep failed")

    async def beat(self) -> None:
        db = self.ctx.db
        for job_id, run in list(self.runs.items()):
            if run.done.is_set():
                continue
            owned, cancel = await db.run(lambda s, j=job_id: s.heartbeat(j))
            if not owned:
                # Also seen once this run's own end is written: then the kill finds no process.
                if not run.lease_lost and run.outcome is None:
                    log.error("job %s: its lease is no longer ours; stopping its worker", job_id)
                    run.lease_lost = True
                    if run.worker is not None:
                        run.worker.kill()
                continue
            if cancel and run.requested != protocol.CANCEL:
                log.info("job %s: cancel asked on another replica", job_id)
                await run.ask(protocol.CANCEL)
        expired = await db.run(lambda s: s.expire_leases(MAX_INTERRUPTIONS))
        for job_id, status in expired.items():
            log.warning("job %s: its worker's lease ran out; now %s", job_id, status)
            if status == "queued":
                self.wake()
            else:
                await self.ctx.ended(job_id, status, 0.0)
        self.beats += 1
        if self.beats % PRUNE_EVERY == 0:
            await db.run(lambda s: s.prune_events(EVENTS_KEPT_S))
