"""Where sessions live: this process's memory (the default) or a Redis every replica shares.

`make_session_store` picks the backend from the `session_store` setting; both implement
`SessionBackend`, which is all the engine, the routes and the OIP sequences use. The Redis
client (the `scale` extra) is imported only when a Redis URL is configured, so the default
install needs nothing more.
"""

from __future__ import annotations

from ..redact import without_credentials
from ..sessions import CountHook, SessionStore, StepFn
from ..settings import Settings
from .base import Resolve, SessionBackend

__all__ = ["SessionBackend", "SessionStoreConfigError", "make_session_store"]


class SessionStoreConfigError(RuntimeError):
    """The configured session store cannot be used by this install."""


def make_session_store(
    settings: Settings, step: StepFn, resolve: Resolve, on_count: CountHook | None = None
) -> SessionBackend:
    if settings.session_store == "memory":
        return SessionStore(
            step,
            max_sessions=settings.max_sessions,
            ttl_s=settings.session_ttl_s,
            on_count=on_count,
        )
    try:
        from .redis_store import RedisSessionStore
    except ImportError as e:
        raise SessionStoreConfigError(
            f"session_store {without_credentials(settings.session_store)} needs the redis "
            "package: pip install 'gatehouse[scale]'"
        ) from e
    return RedisSessionStore(
        settings.session_store,
        step,
        resolve,
        max_sessions=settings.max_sessions,
        ttl_s=settings.session_ttl_s,
        on_count=on_count,
    )
