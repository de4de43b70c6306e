"""`python -m service`: settings from flags and GATEHOUSE_* env vars, then uvicorn."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

import uvicorn

from . import logs
from .app import create_app
from .exposure import check_exposure, hide_key_from_title, is_loopback  # noqa: F401
from .settings import parse_args

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


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    logs.configure_logging(settings.log_level)
    if argv is None:  # the real command line: what ps shows
        hide_key_from_title()
    problem = check_exposure(settings)
    if problem:
        log.error(problem)
        return 2
    base = f"http://{settings.host}:{settings.port}"
    log.info("Gatehouse on %s (API docs: %s/docs), model store %s", base, base, settings.model_dir)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,  # our own middleware logs one JSON line per request
        timeout_graceful_shutdown=30,
    )
    server = GracefulServer(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
