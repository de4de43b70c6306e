"""`gatehouse serve --workers N`: N server processes on one listening socket, kept running.

The supervisor binds the port once and hands the socket to N children (multiprocessing
"spawn": each a fresh interpreter with its own torch, engine and batcher); the kernel gives
each accepted connection to one of them. A child that dies is started again; SIGTERM or
SIGINT is passed on as SIGTERM, each child drains its requests, and the supervisor exits 0
once all have stopped cleanly.

The supervisor builds no app and loads no model: it only binds, spawns and waits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from . import logs
from .exposure import check_exposure
from .settings import Settings

log = logging.getLogger("gatehouse.supervisor")

STOP_TIMEOUT_S = 60.0  # a child's graceful stop (uvicorn's own drain is 30 s) before SIGKILL
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # after consecutive early deaths of one slot
EARLY_DEATH_S = 30.0  # a child that lived less than this counts towards the backoff
GIVE_UP_AFTER = 8  # consecutive early deaths of one slot: the setup is broken, stop
_PR_SET_PDEATHSIG = 1


def local_state_problem(settings: Settings) -> str | None:
    """Why N > 1 processes cannot share this configuration; None when they can.

    Each process has its own memory and would run its own SQLite queue: a session opened on
    one worker would be unknown to the next, and jobs could not be claimed safely.
    """
    if settings.workers <= 1:
        return None
    # Read with defaults: the store settings belong to other modules of the service.
    local = []
    if getattr(settings, "session_store", "memory") == "memory":
        local.append("session_store is 'memory' (use redis://...)")
    if getattr(settings, "job_store", "sqlite") == "sqlite":
        local.append("job_store is 'sqlite' (use postgresql://...)")
    if not local:
        return None
    return (
        f"refusing --workers {settings.workers}: the processes would not share state, "
        f"{' and '.join(local)}; set those stores or run one worker"
    )


def bind(settings: Settings) -> socket.socket:
    """The one listening socket every child accepts on (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    # A supervisor killed with SIGKILL cannot pass anything on: the kernel tells the child.
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(libc_name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child(settings: Settings, sock: socket.socket, index: int, parent: int) -> None:
    """One worker: the whole server on the inherited socket."""
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which stops
    # each child once; two signals would make uvicorn skip the drain.
    os.setpgrp()
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above
        return
    from .server import serve_on  # torch and the app load here, in the child only

    code = serve_on(settings, sock, f"worker {index}")
    raise SystemExit(code)


class Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        self.slots: list[BaseProcess | None] = [None] * settings.workers
        self.started_at = [0.0] * settings.workers
        self.early_deaths = [0] * settings.workers
        self.due = [0.0] * settings.workers  # when an empty slot may start again
        self.stopping = False
        self.failed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("signal %s: stopping %d workers", signal.Signals(signum).name, len(self.slots))
        self.stopping = True

    def _start(self, index: int) -> None:
        proc = self.context.Process(
            target=_child,
            args=(self.settings, self.sock, index, os.getpid()),
            name=f"gatehouse-worker-{index}",
        )
        proc.start()
        self.slots[index] = proc
        self.started_at[index] = time.monotonic()
        log.info("worker %d started (pid %s)", index, proc.pid)

    def _reap(self, index: int, proc: BaseProcess) -> None:
        proc.join()
        lived = time.monotonic() - self.started_at[index]
        self.slots[index] = None
        if self.stopping:
            return
        self.early_deaths[index] = self.early_deaths[index] + 1 if lived < EARLY_DEATH_S else 0
        if self.early_deaths[index] >= GIVE_UP_AFTER:
            log.error(
                "worker %d died %d times in a row within %.0fs of starting: giving up",
                index,
                self.early_deaths[index],
                EARLY_DEATH_S,
            )
            self.failed = self.stopping = True
            return
        step = min(self.early_deaths[index], len(RESTART_BACKOFF_S)) - 1
        delay = RESTART_BACKOFF_S[step] if step >= 0 else 0.0
        self.due[index] = time.monotonic() + delay
        log.warning(
            "worker %d (pid %s) exited with %s after %.1fs: restarting in %.1fs",
            index,
            proc.pid,
            proc.exitcode,
            lived,
            delay,
        )

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for index in range(len(self.slots)):
                self._start(index)
            while not self.stopping:
                now = time.monotonic()
                for index, proc in enumerate(self.slots):
                    if proc is None and now >= self.due[index]:
                        self._start(index)
                live = {p.sentinel: i for i, p in enumerate(self.slots) if p is not None}
                if not live:  # every slot waits out its backoff
                    time.sleep(0.2)
                    continue
                # A short timeout: signals and due restarts are looked at between waits.
                for ready in wait(list(live), timeout=0.2):
                    index = live[ready]  # type: ignore[index]
                    proc = self.slots[index]
                    if proc is not None:
                        self._reap(index, proc)
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_all(self) -> int:
        live = [p for p in self.slots if p is not None and p.is_alive()]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        codes = []
        for proc in [p for p in self.slots if p is not None]:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("worker pid %s did not stop in %.0fs: killed", proc.pid, STOP_TIMEOUT_S)
                proc.kill()
                proc.join()
            codes.append(proc.exitcode)
        if self.failed:
            return 1
        return 0 if all(code == 0 for code in codes) else 1


def serve_workers(settings: Settings) -> int:
    """`serve` with N > 1 processes: 0 after a clean stop, 1 on failure, 2 if refused."""
    logs.configure_logging(settings.log_level)
    problem = check_exposure(settings) or local_state_problem(settings)
    if problem:
        log.error(problem)
        return 2
    try:
        sock = bind(settings)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, e.strerror or e)
        return 1
    port = sock.getsockname()[1]
    log.info(
        "Gatehouse on http://%s:%s with %d workers, model store %s",
        settings.host,
        port,
        settings.workers,
        settings.model_dir,
    )
    try:
        return Supervisor(settings.model_copy(update={"port": port}), sock).run()
    finally:
        sock.close()
