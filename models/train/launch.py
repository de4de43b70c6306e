"""`--nproc N`: start N ranks of `python -m models.train` on this host through torchrun's agent.

This is what `torchrun --standalone --nproc-per-node N -m models.train ...` does (the same
elastic agent, a rendezvous on a free loopback port, no restarts), called in-process so the
command keeps the train CLI's exit codes: 0 done, 1 training failed, 2 bad input, 130 stopped
(a rank that fails ends the others; a signal to the launcher is passed to every rank, which
stop together at the next step, with a checkpoint when --checkpoint-dir is given).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

STOPPED = 130


def _threads_per_rank(nproc: int) -> int:
    # N ranks each at torch's default (every core) would oversubscribe the host N times.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // nproc)


def exit_code(failures: dict[int, int]) -> int:
    """One exit code for the ranks that failed: theirs when they agree, else the lowest rank's.

    A rank killed by a signal (a negative code) counts as stopped when it is SIGINT or SIGTERM,
    as failed otherwise.
    """

    def one(code: int) -> int:
        if code >= 0:
            return code
        return STOPPED if -code in (signal.SIGINT, signal.SIGTERM) else 1

    codes = {one(c) for c in failures.values()}
    return codes.pop() if len(codes) == 1 else one(failures[min(failures)])


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m models.train ARGV` as `nproc` ranks; the exit code of the whole."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        local_addr="127.0.0.1",
    )
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads_per_rank(nproc)))
    # The ranks import the very `models` package this process runs, wherever they start.
    root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    # The agent logs every failure at length; the ranks' own messages say what happened.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "models.train", *argv)
    except ChildFailedError as e:
        return exit_code({rank: f.exitcode for rank, f in e.failures.items()})
    except SignalException:
        return STOPPED
    return 0
