"""The HTTP server: uvicorn configured with the edge limits, and a graceful stop on signals."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from . import logs
from .app import create_app
from .exposure import check_exposure, is_loopback  # noqa: F401  (is_loopback: old import path)
from .protocol import EdgeLimits, protocol_class
from .settings import Settings

log = logging.getLogger("gatehouse")


class GracefulServer(uvicorn.Server):
    """SIGTERM/SIGINT drain in-flight requests, run the shutdown, then exit 0.

    Stock uvicorn re-raises the caught signal after its graceful shutdown, which turns a
    clean stop into exit status -15; supervisors read that as a crash.
    """

    async def shutdown(self, sockets: list | None = None) -> None:  # type: ignore[override]
        # Event streams never end by themselves: close them first, or the drain below would
        # wait for them until the graceful-shutdown timeout.
        app = getattr(self.config, "loaded_app", None)
        jobs = getattr(getattr(getattr(app, "state", None), "jobs", None), "close_streams", None)
        if jobs is None and hasattr(self.config.app, "state"):
            jobs = getattr(getattr(self.config.app.state, "jobs", None), "close_streams", None)
        if jobs is not None:
            jobs()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def edge_limits(settings: Settings) -> EdgeLimits:
    return EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_lines=settings.max_header_lines,
        header_timeout_s=settings.header_timeout_s,
        body_idle_timeout_s=settings.body_idle_timeout_s,
        max_connections=settings.max_connections,
    )


def build_config(settings: Settings) -> uvicorn.Config:
    """uvicorn with httptools (the fast parser) plus the limits it lacks (service.protocol).

    `limit_concurrency` stays off on purpose: it counts idle and slow sockets too, so a crowd of
    them would turn every request into a 503; the protocol sheds those sockets instead, and the
    engine's queue bound (`max_queue`) limits the work in flight.
    """
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=protocol_class(edge_limits(settings)),
        log_config=None,
        access_log=False,  # our own middleware logs one JSON line per request
        timeout_keep_alive=settings.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=30,
    )


def serve(settings: Settings) -> int:
    """One server process until a signal; 0 after a clean stop, 1 if it never started, 2 if
    refused. `workers` > 1 is service.supervisor's (`python -m service` picks which)."""
    logs.configure_logging(settings.log_level)
    problem = check_exposure(settings)
    if problem:
        log.error(problem)
        return 2
    base = f"http://{settings.host}:{settings.port}"
    log.info("Gatehouse on %s (API docs: %s/docs), model store %s", base, base, settings.model_dir)
    server = GracefulServer(build_config(settings))
    server.run()
    return 0 if server.started else 1


def serve_on(settings: Settings, sock: socket.socket, label: str) -> int:
    """One of the supervisor's workers: the same server on a socket bound by the supervisor."""
    logs.configure_logging(settings.log_level)
    log.info("%s (pid %d) serving model store %s", label, os.getpid(), settings.model_dir)
    server = GracefulServer(build_config(settings))
    server.run(sockets=[sock])
    return 0 if server.started else 1
