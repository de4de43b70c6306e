"""The job store: where job records, their state changes and (when shared) their events live.

Two implementations share one set of methods (`JobStore`): `db.JobDB`, SQLite next to the
model store (the default; one server runs its jobs), and `pg.PgJobDB`, PostgreSQL shared by
every replica and `gatehouse worker` (claims with SKIP LOCKED, leases, events in a table).
`settings.job_store` chooses: "sqlite", or a `postgresql://` / `postgres://` URL.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..redact import without_credentials

if TYPE_CHECKING:
    from ..settings import Settings
    from .db import JobRow

PG_SCHEMES = ("postgresql://", "postgres://")


def is_shared(job_store: str) -> bool:
    """True when jobs live in PostgreSQL, where many processes claim them."""
    return job_store.startswith(PG_SCHEMES)


def describe(job_store: str) -> str:
    """The store as logs and errors may show it: a URL's password masked."""
    return without_credentials(job_store) if is_shared(job_store) else job_store


def store_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a store raises when its database refuses a call (disk full, server
    gone): a job end that meets one is held in memory and written again later."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)
    try:
        import psycopg
    except ImportError:  # the scale extra is not installed: SQLite only
        return errors
    return (*errors, psycopg.Error)


STORE_ERRORS = store_errors()


def new_worker_id() -> str:
    """Names this process in the leases it holds: host, pid and a random part (pids repeat
    across hosts and restarts)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class JobStore(Protocol):
    """What the manager and a run ask of a store; every call runs on one executor thread."""

    def close(self) -> None: ...

    def insert(
        self,
        job_id: str,
        name: str,
        arch: str,
        request: dict[str, Any],
        corpus: dict[str, Any],
        now: float | None = None,
    ) -> JobRow: ...

    def claim(self) -> JobRow | None:
        """The oldest queued job, now running for this process; None when none waits."""
        ...

    def update_progress(
        self,
        job_id: str,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
        config: dict[str, Any] | None = None,
        corpus: dict[str, Any] | None = None,
        resumed_step: int | None = None,
        add_run_seconds: float = 0.0,
    ) -> bool: ...

    def record_version(self, job_id: str, version: int) -> int: ...

    def requeue(self, job_id: str, note: str, add_run_seconds: float = 0.0) -> bool: ...

    def interrupt(
        self, job_id: str, reason: str, max_interruptions: int, add_run_seconds: float = 0.0
    ) -> str | None: ...

    def finish(
        self,
        job_id: str,
        status: str,
        error: str | None = None,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
        note: str | None = None,
        only_from: tuple[str, ...] = ...,
        add_run_seconds: float = 0.0,
    ) -> bool: ...

    def recover(self, max_interruptions: int) -> dict[str, str]: ...

    def get(self, job_id: str) -> JobRow | None: ...

    def list(self, statuses: Iterable[str] | None = None, limit: int = 100) -> list[JobRow]: ...

    def counts(self) -> dict[str, int]: ...

    def ids(self) -> set[str]: ...


def opener(settings: Settings, worker_id: str) -> Callable[[], JobStore]:
    """A function that opens the store `settings.job_store` names (on the store's thread)."""
    if is_shared(settings.job_store):
        url = settings.job_store

        def open_pg() -> JobStore:
            from .pg import PgJobDB  # psycopg only where PostgreSQL is asked for

            return PgJobDB(url, worker_id, settings.job_lease_s)

        return open_pg

    path = settings.jobs_db

    def open_sqlite() -> JobStore:
        from .db import JobDB

        return JobDB(path)

    return open_sqlite
