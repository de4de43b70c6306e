"""`gatehouse worker` (`python -m service.jobs.claimer`): runs training jobs, serves nothing.

It claims queued jobs from the shared PostgreSQL job store, trains each in a worker child
process as a server would (the job's files, checkpoints included, are in the shared model
store) and saves the version there; the serving replicas' store scans pick it up. The flags
are the server's (`--job-store`, `--model-dir`, `--max-running-jobs`, `--job-threads`,
`--device`, `--job-lease-s`, ...); those about HTTP have no effect here.

SIGTERM or Ctrl-C: running jobs write a checkpoint and go back to the queue, for this or
another worker to resume.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[:1] != [_ROOT]:  # as in service/__main__.py: this project's `models` first
    sys.path.insert(0, _ROOT)

from ..settings import Settings  # noqa: E402
from ..settings_load import parse_args  # noqa: E402
from .store import describe, is_shared  # noqa: E402

log = logging.getLogger("gatehouse.worker")


async def work(settings: Settings) -> None:
    """Claim and run jobs until SIGTERM or SIGINT."""
    from .manager import JobManager

    manager = JobManager(settings, registry=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await manager.start()
    log.info("worker %s running jobs of %s", manager.worker_id, describe(settings.job_store))
    try:
        await stop.wait()
    finally:
        log.info("worker %s stopping: running jobs checkpoint and requeue", manager.worker_id)
        await manager.stop()


def main(argv: list[str] | None = None, prog: str = "gatehouse worker") -> int:
    settings = parse_args(argv, prog)
    if not is_shared(settings.job_store):
        print(
            f"{prog}: error: a worker needs a shared job store: --job-store postgresql://... "
            "(with sqlite the server that owns the model store runs its jobs)",
            file=sys.stderr,
        )
        return 2
    if not settings.run_jobs:
        print(f"{prog}: error: --no-run-jobs leaves a worker nothing to do", file=sys.stderr)
        return 2
    from ..exposure import hide_key_from_title

    hide_key_from_title(module="service.jobs.claimer")
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from .db import JobDBError

    try:
        asyncio.run(work(settings))
    except JobDBError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m service.jobs.claimer"))
