"""Job records in SQLite (WAL), next to the model store; they outlive the server process.

One connection, used from one thread at a time (the manager runs every call on a single
executor thread). State changes are conditional updates (`WHERE status IN (...)`), so when
two outcomes race (a cancel and a finished worker) the first to commit wins and the second
reports that it changed nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from models.json_values import json_safe

if TYPE_CHECKING:
    from .store import JobStore

T = TypeVar("T")
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")

SCHEMA_VERSION = 1
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE jobs (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        name           TEXT NOT NULL,
        arch           TEXT NOT NULL,
        status         TEXT NOT NULL CHECK (status IN
                           ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        created_at     REAL NOT NULL,
        started_at     REAL,
        finished_at    REAL,
        updated_at     REAL NOT NULL,
        request        TEXT NOT NULL,
        corpus         TEXT NOT NULL,
        config         TEXT,
        progress       REAL NOT NULL DEFAULT 0,
        metrics        TEXT NOT NULL DEFAULT '{}',
        history        TEXT NOT NULL DEFAULT '[]',
        model_version  INTEGER,
        error          TEXT,
        attempts       INTEGER NOT NULL DEFAULT 0,
        interruptions  INTEGER NOT NULL DEFAULT 0,
        run_seconds    REAL NOT NULL DEFAULT 0,
        note           TEXT,
        resumed_step   INTEGER
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    """,
}


class JobDBError(RuntimeError):
    """The database cannot be used (newer schema, corrupt file); the message says which."""


@dataclass
class JobRow:
    id: str
    name: str
    arch: str
    status: str
    created_at: float
    updated_at: float
    request: dict[str, Any]
    corpus: dict[str, Any]
    started_at: float | None = None
    finished_at: float | None = None
    config: dict[str, Any] | None = None
    progress: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    model_version: int | None = None
    error: str | None = None
    attempts: int = 0
    interruptions: int = 0
    run_seconds: float = 0.0
    note: str | None = None
    resumed_step: int | None = None
    seq: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL


_JSON_COLUMNS = {"request", "corpus", "config", "metrics", "history"}


def _dumps(value: Any) -> str:
    # NaN/inf (a diverged loss) have no JSON spelling: stored as null.
    return json.dumps(json_safe(value), separators=(",", ":"), allow_nan=False)


def _row(r: sqlite3.Row) -> JobRow:
    data = {k: r[k] for k in r.keys()}
    for k in _JSON_COLUMNS:
        if data[k] is not None:
            data[k] = json.loads(data[k])
    return JobRow(**data)


class JobDB:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The manager confines use to one executor thread; created on another one (start-up).
        self._conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL loses nothing when the process dies; only an OS crash can
            # drop the last commits, and a job lost that way was never acknowledged as done.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise JobDBError(f"{self.path}: cannot open the jobs database: {e}") from e

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JobDBError(
                f"{self.path}: schema version {version} is newer than this server's "
                f"{SCHEMA_VERSION}; upgrade the server or point it at another model dir"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits first; the explicit transaction makes each step atomic.
            self._conn.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;"
            )

    def close(self) -> None:
        self._conn.close()

    # ---- writes ----------------------------------------------------------------------
    def insert(
        self,
        job_id: str,
        name: str,
        arch: str,
        request: dict[str, Any],
        corpus: dict[str, Any],
        now: float | None = None,
    ) -> JobRow:
        now = time.time() if now is None else now
        self._conn.execute(
            "INSERT INTO jobs (id, name, arch, status, created_at, updated_at, request, corpus) "
            "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
            (job_id, name, arch, now, now, _dumps(request), _dumps(corpus)),
        )
        row = self.get(job_id)
        assert row is not None  # just inserted in this connection
        return row

    def mark_running(self, job_id: str, now: float | None = None) -> bool:
        """queued -> running; counts the attempt. False if the job is no longer queued."""
        now = time.time() if now is None else now
        cur = self._conn.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, "
            "started_at = COALESCE(started_at, ?), updated_at = ?, error = NULL "
            "WHERE id = ? AND status = 'queued'",
            (now, now, job_id),
        )
        return cur.rowcount == 1

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
    ) -> bool:
        """Refresh what a running job reports; a job that ended meanwhile is left as it is."""
        sets = ["updated_at = ?", "run_seconds = run_seconds + ?"]
        args: list[Any] = [time.time(), max(0.0, add_run_seconds)]
        for column, value in (
            ("progress", progress),
            ("metrics", metrics),
            ("history", history),
            ("config", config),
            ("corpus", corpus),
            ("resumed_step", resumed_step),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(_dumps(value) if column in _JSON_COLUMNS else value)
        cur = self._conn.execute(
            f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND status = 'running'",
            (*args, job_id),
        )
        return cur.rowcount == 1

    def record_version(self, job_id: str, version: int) -> int:
        """The version this job produced; the first one recorded wins and is returned."""
        self._conn.execute(
            "UPDATE jobs SET model_version = ? WHERE id = ? AND model_version IS NULL",
            (version, job_id),
        )
        row = self._conn.execute(
            "SELECT model_version FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise KeyError(job_id)
        return int(row[0])

    def requeue(self, job_id: str, note: str, add_run_seconds: float = 0.0) -> bool:
        """running -> queued after an orderly stop (shutdown): resumes from its checkpoint."""
        cur = self._conn.execute(
            "UPDATE jobs SET status = 'queued', note = ?, updated_at = ?, "
            "run_seconds = run_seconds + ? WHERE id = ? AND status = 'running'",
            (note, time.time(), max(0.0, add_run_seconds), job_id),
        )
        return cur.rowcount == 1

    def interrupt(
        self, job_id: str, reason: str, max_interruptions: int, add_run_seconds: float = 0.0
    ) -> str | None:
        """A running job lost its worker unasked (server killed, worker stopped by a signal).

        It goes back to the queue to resume from its checkpoint, unless that already happened
        `max_interruptions` times: a job that keeps taking the server down must not do so
        forever, so then it fails. Returns the new status, None if it was not running.
        """
        row = self._conn.execute(
            "SELECT interruptions FROM jobs WHERE id = ? AND status = 'running'", (job_id,)
        ).fetchone()
        if row is None:
            return None
        count = int(row[0]) + 1
        now = time.time()
        if count > max_interruptions:
            self._conn.execute(
                "UPDATE jobs SET status = 'failed', interruptions = ?, finished_at = ?, "
                "updated_at = ?, run_seconds = run_seconds + ?, error = ? "
                "WHERE id = ? AND status = 'running'",
                (
                    count,
                    now,
                    now,
                    max(0.0, add_run_seconds),
                    f"{reason}; interrupted {count} times, not resumed again",
                    job_id,
                ),
            )
            return "failed"
        self._conn.execute(
            "UPDATE jobs SET status = 'queued', interruptions = ?, updated_at = ?, "
            "run_seconds = run_seconds + ?, note = ? WHERE id = ? AND status = 'running'",
            (
                count,
                now,
                max(0.0, add_run_seconds),
                f"{reason}; resumes from its checkpoint",
                job_id,
            ),
        )
        return "queued"

    def finish(
        self,
        job_id: str,
        status: str,
        error: str | None = None,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
        history: list[dict[str, Any]] | None = None,
        note: str | None = None,
        only_from: tuple[str, ...] = ACTIVE,
        add_run_seconds: float = 0.0,
    ) -> bool:
        """An active job -> a final state. False when it had already ended (first one wins).

        `only_from=("queued",)` cancels a job only if no worker has claimed it yet.
        """
        if status not in FINAL:
            raise ValueError(f"not a final state: {status!r}")
        if not only_from or any(s not in ACTIVE for s in only_from):
            raise ValueError(f"only_from must name active states, got {only_from!r}")
        now = time.time()
        marks = ", ".join("?" for _ in only_from)
        cur = self._conn.execute(
            "UPDATE jobs SET status = ?, error = ?, finished_at = ?, updated_at = ?, "
            "progress = COALESCE(?, progress), metrics = COALESCE(?, metrics), "
            "history = COALESCE(?, history), note = COALESCE(?, note), "
            f"run_seconds = run_seconds + ? WHERE id = ? AND status IN ({marks})",
            (
                status,
                error,
                now,
                now,
                progress,
                None if metrics is None else _dumps(metrics),
                None if history is None else _dumps(history),
                note,
                max(0.0, add_run_seconds),
                job_id,
                *only_from,
            ),
        )
        return cur.rowcount == 1

    def recover(self, max_interruptions: int) -> dict[str, str]:
        """After a restart every job left 'running' has nothing running it: interrupt each.

        Returns {job id: new status}.
        """
        rows = self._conn.execute(
            "SELECT id FROM jobs WHERE status = 'running' ORDER BY seq"
        ).fetchall()
        out: dict[str, str] = {}
        for (job_id,) in rows:
            status = self.interrupt(
                job_id, "the server stopped while this job ran", max_interruptions
            )
            if status is not None:
                out[job_id] = status
        return out

    # ---- reads -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRow | None:
        r = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if r is None else _row(r)

    def list(self, statuses: Iterable[str] | None = None, limit: int = 100) -> list[JobRow]:
        """Newest first."""
        wanted = list(statuses) if statuses is not None else []
        if wanted:
            marks = ", ".join("?" for _ in wanted)
            rows = self._conn.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq DESC LIMIT ?",
                (*wanted, limit),
            ).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_row(r) for r in rows]

    def next_queued(self) -> JobRow | None:
        """The oldest queued job (FIFO, so a resumed job keeps its place)."""
        r = self._conn.execute(
            "SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
        ).fetchone()
        return None if r is None else _row(r)

    def claim(self) -> JobRow | None:
        """The oldest queued job, marked running; None when none waits. One thread uses the
        connection, so nothing can come between the read and the conditional update."""
        row = self.next_queued()
        if row is None or not self.mark_running(row.id):
            return None
        return self.get(row.id)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for status, n in self._conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            out[status] = n
        return out

    def ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT id FROM jobs")}


class AsyncJobDB:
    """A job store (JobDB, or pg.PgJobDB) used from the event loop: every call runs on one
    executor thread.

    One thread keeps the connection single-threaded and the calls in order; the event loop
    never waits on disk.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-db")
        self._db: Any = None

    async def open(self, path: Path) -> None:
        self._db = await self._submit(lambda: JobDB(path))

    async def open_with(self, factory: Callable[[], JobStore]) -> None:
        """Open whichever store `factory` makes, on the store's thread."""
        self._db = await self._submit(factory)

    async def _submit(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def run(self, fn: Callable[[Any], T]) -> T:
        db = self._db
        if db is None:
            raise RuntimeError("the jobs database is not open")
        return await self._submit(lambda: fn(db))

    @property
    def is_open(self) -> bool:
        return self._db is not None

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._submit(db.close)
        self._executor.shutdown(wait=True)
