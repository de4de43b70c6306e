"""Start-up checks on how the server is exposed: refuse an open server on a reachable
address, and keep a key passed as a flag out of the process title (`ps`)."""

from __future__ import annotations

import ipaddress
import logging
import sys

from .auth import KeyFileError, api_key
from .redact import without_credentials
from .settings import Settings

log = logging.getLogger("gatehouse")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> str | None:
    """An open server on a reachable address lets anyone train models: refuse by default.
    An empty key is no key, and an unreadable key file stops the start."""
    try:
        key = api_key(settings)
    except KeyFileError as e:
        return str(e)
    if is_loopback(settings.host) or key is not None or settings.allow_open:
        return None
    return (
        f"refusing to listen on {settings.host} without an API key: set --api-key-file "
        "(GATEHOUSE_API_KEY_FILE) or GATEHOUSE_API_KEY, or pass --allow-open to serve it "
        "open on purpose"
    )


def _masked(argv: list[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
        elif arg == "--api-key":
            out.append(arg)
            hide_next = True
        elif arg.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(without_credentials(arg))  # e.g. --session-store redis://:pw@host
    return out


def hide_key_from_title(argv: list[str] | None = None, module: str = "service") -> bool:
    """Rewrite the process title (what `ps` and /proc/<pid>/cmdline show) with the value of
    `--api-key` and the password of any URL (`--session-store`, `--job-store`) masked; True
    when there was one to hide. The key still passed through the
    command line for an instant, so `api_key_file` or the environment is the safe way."""
    argv = sys.argv if argv is None else argv
    masked = _masked(argv)
    if masked == argv:
        return False
    try:
        import setproctitle  # only where there is something to hide
    except ImportError:  # a declared dependency, but an old install may lack it
        log.warning("setproctitle is not installed: --api-key stays visible in ps")
        return False
    setproctitle.setproctitle(" ".join([sys.executable, "-m", module, *masked[1:]]))
    return True
