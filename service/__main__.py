"""`python -m service` (and `gatehouse serve`): settings from flags, env and file, then uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

# `python -m` puts the working directory first on sys.path: a user's own `models.py` there
# would shadow this project's `models` package. The folder holding this package goes first.
_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

import contextlib  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import uvicorn  # noqa: E402

from .settings import Settings  # noqa: E402
from .settings_load import parse_args  # noqa: E402

log = logging.getLogger("gatehouse")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> str | None:
    """An open server on a reachable address lets anyone train models: refuse by default."""
    if is_loopback(settings.host) or settings.api_key is not None or settings.allow_open:
        return None
    return (
        f"refusing to listen on {settings.host} without an API key: set --api-key "
        "(GATEHOUSE_API_KEY), or pass --allow-open to serve it open on purpose"
    )


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


def other_env_names() -> list[str]:
    """`GATEHOUSE_*` variables read by other settings than `Settings`: not unknown ones."""
    from .jobs.bounds import TrainBounds  # imports torch: only when a name needs checking

    prefix = TrainBounds.model_config.get("env_prefix", "")
    return [prefix.upper() + name.upper() for name in TrainBounds.model_fields]


def main(argv: list[str] | None = None, prog: str = "python -m service") -> int:
    settings = parse_args(argv, prog, other_env_names)
    return serve(settings)


def serve(settings: Settings) -> int:
    # The app (and torch) load after the settings are known to be good: `--help` and a bad
    # value answer at once.
    from . import logs
    from .app import create_app

    logs.configure_logging(settings.log_level)
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
