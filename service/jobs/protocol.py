"""What the server and a training worker say to each other (service/jobs/worker.py).

Events go from the worker to the server as JSON lines `{"event": NAME, ...}`; commands go the
other way, one per line; the worker's exit status says how it ended.
"""

from __future__ import annotations

from models.train import STOP_CANCEL, STOP_CHECKPOINT

# Commands, which are also what the worker's `should_stop` hands to train().
CANCEL = STOP_CANCEL  # stop, no version
CHECKPOINT = STOP_CHECKPOINT  # write a checkpoint and exit, to be resumed
COMMANDS = (CANCEL, CHECKPOINT)

# Events: the job's config once it starts, its corpus once read, progress while it trains,
# then exactly one ending.
STARTED, CORPUS, PROGRESS = "started", "corpus", "progress"
SUCCEEDED, FAILED, CANCELLED, STOPPED = "succeeded", "failed", "cancelled", "stopped"
ENDINGS = (SUCCEEDED, FAILED, CANCELLED, STOPPED)

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED, EXIT_STOPPED = 0, 1, 2, 3


def stronger(pending: str | None, command: str) -> str:
    """The request in force after `command` arrives: a cancel overrides a pending
    checkpoint-and-stop; nothing overrides a cancel."""
    return command if command == CANCEL or pending is None else pending
