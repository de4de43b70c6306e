"""Where sessions live: this process's memory (the default) or a Redis every replica shares.

`make_session_store` picks the backend from the `session_store` setting; both implement
`SessionBackend`, which is all the engine, the routes and the OIP sequences use.
"""

from __future__ import annotations

from ..sessions import CountHook, SessionStore, StepFn
from ..settings import Settings
from .base import SessionBackend
from .redis_store import RedisSessionStore, Resolve

__all__ = ["RedisSessionStore", "SessionBackend", "make_session_store"]


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
    return RedisSessionStore(
        settings.session_store,
        step,
        resolve,
        max_sessions=settings.max_sessions,
        ttl_s=settings.session_ttl_s,
        on_count=on_count,
    )
