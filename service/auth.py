"""Who may call what: the API key, its scopes, and the client a request comes from.

Kept free of the engine and the routes so every router (and `/metrics`) can import it.

Scopes, when a key is configured: routes that change state (train, cancel) and session
creation always need it; with `protect_inference`, every other route that reveals anything
(inference, sessions, models, jobs, datasets, `/metrics` unless `metrics_open`) needs it too.
Health probes, the web page and the API docs stay open.
"""

from __future__ import annotations

import functools
import hmac
from pathlib import Path

from fastapi import Request

from .errors import ApiError
from .ratelimit import RateLimiter
from .settings import Settings


class KeyFileError(ValueError):
    """`api_key_file` is missing, unreadable or empty."""


@functools.lru_cache(maxsize=8)
def _read_key_file(path: str) -> bytes:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read the API key file {path}: {e}") from None
    lines = text.strip().splitlines()
    key = lines[0].strip() if lines else ""
    if not key:
        raise KeyFileError(f"the API key file {path} is empty")
    return key.encode()


def api_key(settings: Settings) -> bytes | None:
    """The configured key: `api_key_file`'s first line, else `api_key`; None when neither
    (an empty or blank value is no key: the server is then open, and refuses to listen on
    a non-loopback address without `allow_open`)."""
    if settings.api_key_file is not None:
        return _read_key_file(str(settings.api_key_file))
    if settings.api_key is None:
        return None
    return settings.api_key.get_secret_value().encode() or None


def presented_key(request: Request) -> bytes | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token.encode()


def has_key(request: Request) -> bool:
    """Whether the request carries the configured key (True when none is configured)."""
    expected = api_key(request.app.state.settings)
    if expected is None:
        return True
    given = presented_key(request)
    # compare_digest takes time independent of where the strings differ.
    return given is not None and hmac.compare_digest(given, expected)


def check_key(request: Request) -> None:
    if not has_key(request):
        raise ApiError(
            401,
            "missing or wrong API key",
            headers={"WWW-Authenticate": 'Bearer realm="gatehouse"'},
        )


async def require_admin(request: Request) -> None:
    """Routes that change state (train, cancel) need the key whenever one is configured."""
    check_key(request)


async def require_reader(request: Request) -> None:
    """Inference and read routes: open unless `protect_inference` closes them too."""
    if request.app.state.settings.protect_inference:
        check_key(request)


async def require_metrics_reader(request: Request) -> None:
    """`/metrics`: behind the key with `protect_inference`, unless `metrics_open`."""
    # `metrics.install` also serves apps without Gatehouse settings: nothing to check there.
    settings = getattr(request.app.state, "settings", None)
    if settings is not None and settings.protect_inference and not settings.metrics_open:
        check_key(request)


def client_id(request: Request) -> str:
    """The address the connection comes from: what per-client limits count by. Behind a
    reverse proxy that is the proxy, unless uvicorn is told to trust its forwarded headers."""
    client = request.client
    return client.host if client is not None else "unknown"


def session_quota(request: Request) -> RateLimiter:
    """The app's one per-client limit on opening sessions, made on first use."""
    state = request.app.state
    if not hasattr(state, "session_quota"):
        settings = state.settings
        state.session_quota = RateLimiter(
            settings.session_create_rate, settings.session_create_burst
        )
    return state.session_quota


def admit_new_session(request: Request) -> None:
    """What opening a session takes, wherever it is opened (POST /sessions, an OIP
    `sequence_start`): the API key when one is configured, and room in the client's rate
    limit, so no client can evict everyone else's sessions by opening its own."""
    check_key(request)
    quota = session_quota(request)
    wait = quota.take(client_id(request))
    if wait is not None:
        raise ApiError(
            429,
            f"too many sessions opened from this client: at most {quota.burst} at once and "
            f"{quota.rate:g} per second",
            headers={"Retry-After": str(max(1, round(wait + 0.5)))},
        )
