"""Job records, leases and events in PostgreSQL, shared by every replica and worker.

The same methods as the SQLite `db.JobDB` (see `store.JobStore`), with what many processes
need on top:
* `claim` takes the oldest queued job with `SELECT ... FOR UPDATE SKIP LOCKED`: two claimers
  never get one job, and neither waits on the other's row lock;
* the claimer holds a lease (`lease_owner`, `lease_expires`, on the database's clock so the
  hosts' clocks do not matter) and renews it with `heartbeat` while the job trains; a
  transition out of "running" is made only by the lease's owner, so a worker whose lease was
  taken from it cannot overwrite the job's newer state;
* `expire_leases` puts a job whose owner stopped renewing back in the queue (an interruption,
  resumed from its checkpoint by whoever claims it next), or fails it after too many;
* `cancel_requested`: a cancel asked on any replica, read by the owner's heartbeat;
* `gatehouse_job_events`: each job's status, progress and epoch events, which the SSE
  streams of every replica read.

The schema is created on open, under an advisory lock, so replicas starting together do not
race on it. One connection, used from one thread (the manager's store thread); a dropped
connection is opened again on the next call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..redact import without_credentials
from .db import _JSON_COLUMNS, ACTIVE, FINAL, STATES, JobDBError, JobRow, _dumps

log = logging.getLogger("gatehouse.jobs")

SCHEMA_VERSION = 1
# pg_advisory_xact_lock's key for schema changes: any fixed 64-bit number unlikely to be
# used by another application on the same database ("gatehous" in ASCII).
_SCHEMA_LOCK = 0x6761746568F5
_JOBS = "gatehouse_jobs"
_EVENTS = "gatehouse_job_events"
_MIGRATIONS: dict[int, str] = {
    1: f"""
    CREATE TABLE {_JOBS} (
        seq              BIGSERIAL PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        name             TEXT NOT NULL,
        arch             TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN
                             ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
        created_at       DOUBLE PRECISION NOT NULL,
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        updated_at       DOUBLE PRECISION NOT NULL,
        request          JSONB NOT NULL,
        corpus           JSONB NOT NULL,
        config           JSONB,
        progress         DOUBLE PRECISION NOT NULL DEFAULT 0,
        metrics          JSONB NOT NULL DEFAULT '{{}}',
        history          JSONB NOT NULL DEFAULT '[]',
        model_version    INTEGER,
        error            TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        interruptions    INTEGER NOT NULL DEFAULT 0,
        run_seconds      DOUBLE PRECISION NOT NULL DEFAULT 0,
        note             TEXT,
        resumed_step     INTEGER,
        lease_owner      TEXT,
        lease_expires    TIMESTAMPTZ,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX {_JOBS}_by_status ON {_JOBS} (status, seq);
    CREATE TABLE {_EVENTS} (
        seq     BIGSERIAL PRIMARY KEY,
        job_id  TEXT NOT NULL REFERENCES {_JOBS} (id) ON DELETE CASCADE,
        event   TEXT NOT NULL,
        data    JSONB NOT NULL,
        at      DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX {_EVENTS}_by_job ON {_EVENTS} (job_id, seq);
    """,
}
_ROW_FIELDS = (
    "seq, id, name, arch, status, created_at, updated_at, request, corpus, started_at, "
    "finished_at, config, progress, metrics, history, model_version, error, attempts, "
    "interruptions, run_seconds, note, resumed_step"
)


def _row(r: dict[str, Any]) -> JobRow:
    return JobRow(**r)


def _json(value: Any) -> str | None:
    return None if value is None else _dumps(value)


class PgJobDB:
    def __init__(self, url: str, worker_id: str, lease_s: float) -> None:
        self.url = url
        self.worker_id = worker_id
        self.lease_s = float(lease_s)
        self._conn = self._connect()
        try:
            self._migrate()
        except psycopg.Error as e:
            self._conn.close()
            raise JobDBError(f"{self}: cannot set up the jobs tables: {e}") from e

    def __str__(self) -> str:
        return without_credentials(self.url)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except psycopg.Error as e:
            # psycopg's message names host and port, never the password; the URL is masked.
            raise JobDBError(f"{self}: cannot connect to PostgreSQL: {e}") from e

    def _cx(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn.closed or self._conn.broken:
            log.warning("the jobs database connection was lost: connecting again")
            self._conn = self._connect()
        return self._conn

    def _exec(self, sql: str, args: dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
        return self._cx().execute(sql, {"me": self.worker_id, **(args or {})})

    def _migrate(self) -> None:
        conn = self._cx()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS gatehouse_schema (version INTEGER NOT NULL)")
            found = conn.execute("SELECT version FROM gatehouse_schema").fetchone()
            version = 0 if found is None else int(found["version"])
            if version > SCHEMA_VERSION:
                raise JobDBError(
                    f"{self}: schema version {version} is newer than this server's "
                    f"{SCHEMA_VERSION}; upgrade the server or point it at another database"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(_MIGRATIONS[target])
            if found is None:
                conn.execute("INSERT INTO gatehouse_schema VALUES (%s)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                conn.execute("UPDATE gatehouse_schema SET version = %s", (SCHEMA_VERSION,))

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
        r = self._exec(
            f"INSERT INTO {_JOBS} (id, name, arch, status, created_at, updated_at, request, "
            "corpus) VALUES (%(id)s, %(name)s, %(arch)s, 'queued', %(now)s, %(now)s, "
            f"%(request)s::jsonb, %(corpus)s::jsonb) RETURNING {_ROW_FIELDS}",
            {
                "id": job_id,
                "name": name,
                "arch": arch,
                "now": now,
                "request": _dumps(request),
                "corpus": _dumps(corpus),
            },
        ).fetchone()
        assert r is not None  # RETURNING of an insert
        return _row(r)

    def claim(self) -> JobRow | None:
        """The oldest queued job nobody else is claiming, now running under this lease."""
        now = time.time()
        r = self._exec(
            f"UPDATE {_JOBS} SET status = 'running', attempts = attempts + 1, "
            "started_at = COALESCE(started_at, %(now)s), updated_at = %(now)s, error = NULL, "
            "lease_owner = %(me)s, "
            "lease_expires = clock_timestamp() + make_interval(secs => %(lease)s) "
            f"WHERE id = (SELECT id FROM {_JOBS} WHERE status = 'queued' ORDER BY seq "
            f"LIMIT 1 FOR UPDATE SKIP LOCKED) AND status = 'queued' RETURNING {_ROW_FIELDS}",
            {"now": now, "lease": self.lease_s},
        ).fetchone()
        return None if r is None else _row(r)

    def heartbeat(self, job_id: str) -> tuple[bool, bool]:
        """Renew this process's lease on a running job: (still ours, cancel requested)."""
        r = self._exec(
            f"UPDATE {_JOBS} SET "
            "lease_expires = clock_timestamp() + make_interval(secs => %(lease)s) "
            "WHERE id = %(id)s AND status = 'running' AND lease_owner = %(me)s "
            "RETURNING cancel_requested",
            {"id": job_id, "lease": self.lease_s},
        ).fetchone()
        if r is None:
            return False, False
        return True, bool(r["cancel_requested"])

    def request_cancel(self, job_id: str) -> bool:
        """Ask whoever runs this job to cancel it; False when it is not running."""
        cur = self._exec(
            f"UPDATE {_JOBS} SET cancel_requested = TRUE, updated_at = %(now)s "
            "WHERE id = %(id)s AND status = 'running'",
            {"id": job_id, "now": time.time()},
        )
        return cur.rowcount == 1

    def expire_leases(self, max_interruptions: int) -> dict[str, str]:
        """Running jobs whose lease ran out (their worker died or hangs): back to the queue,
        or failed after `max_interruptions`, or cancelled when a cancel was asked. Returns
        {job id: new status}."""
        conn = self._cx()
        out: dict[str, str] = {}
        with conn.transaction():
            rows = conn.execute(
                f"SELECT id, interruptions, lease_owner, cancel_requested FROM {_JOBS} "
                "WHERE status = 'running' "
                "AND lease_expires < clock_timestamp() ORDER BY seq FOR UPDATE SKIP LOCKED"
            ).fetchall()
            now = time.time()
            for r in rows:
                count = int(r["interruptions"]) + 1
                reason = f"its worker {r['lease_owner']} stopped renewing its lease"
                if r["cancel_requested"]:  # asked to stop: it ends here, not in the queue
                    conn.execute(
                        f"UPDATE {_JOBS} SET status = 'cancelled', finished_at = %s, "
                        "updated_at = %s, note = %s, lease_owner = NULL WHERE id = %s",
                        (now, now, f"cancelled; {reason}", r["id"]),
                    )
                    out[r["id"]] = "cancelled"
                elif count > max_interruptions:
                    conn.execute(
                        f"UPDATE {_JOBS} SET status = 'failed', interruptions = %s, "
                        "finished_at = %s, updated_at = %s, error = %s, lease_owner = NULL "
                        "WHERE id = %s",
                        (
                            count,
                            now,
                            now,
                            f"{reason}; interrupted {count} times, not resumed again",
                            r["id"],
                        ),
                    )
                    out[r["id"]] = "failed"
                else:
                    conn.execute(
                        f"UPDATE {_JOBS} SET status = 'queued', interruptions = %s, "
                        "updated_at = %s, note = %s, lease_owner = NULL WHERE id = %s",
                        (count, now, f"{reason}; resumes from its checkpoint", r["id"]),
                    )
                    out[r["id"]] = "queued"
        return out

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
        sets = ["updated_at = %(now)s", "run_seconds = run_seconds + %(spent)s"]
        spent = max(0.0, add_run_seconds)
        args: dict[str, Any] = {"id": job_id, "now": time.time(), "spent": spent}
        for column, value in (
            ("progress", progress),
            ("metrics", metrics),
            ("history", history),
            ("config", config),
            ("corpus", corpus),
            ("resumed_step", resumed_step),
        ):
            if value is not None:
                cast = "::jsonb" if column in _JSON_COLUMNS else ""
                sets.append(f"{column} = %({column})s{cast}")
                args[column] = _dumps(value) if column in _JSON_COLUMNS else value
        cur = self._exec(
            f"UPDATE {_JOBS} SET {', '.join(sets)} "
            "WHERE id = %(id)s AND status = 'running' AND lease_owner = %(me)s",
            args,
        )
        return cur.rowcount == 1

    def record_version(self, job_id: str, version: int) -> int:
        """The version this job produced; the first one recorded wins and is returned."""
        self._exec(
            f"UPDATE {_JOBS} SET model_version = %(v)s WHERE id = %(id)s AND model_version IS NULL",
            {"id": job_id, "v": version},
        )
        r = self._exec(f"SELECT model_version FROM {_JOBS} WHERE id = %(id)s", {"id": job_id})
        found = r.fetchone()
        if found is None:
            raise KeyError(job_id)
        return int(found["model_version"])

    def requeue(self, job_id: str, note: str, add_run_seconds: float = 0.0) -> bool:
        cur = self._exec(
            f"UPDATE {_JOBS} SET status = 'queued', note = %(note)s, updated_at = %(now)s, "
            "run_seconds = run_seconds + %(spent)s, lease_owner = NULL "
            "WHERE id = %(id)s AND status = 'running' AND lease_owner = %(me)s",
            {"id": job_id, "note": note, "now": time.time(), "spent": max(0.0, add_run_seconds)},
        )
        return cur.rowcount == 1

    def interrupt(
        self, job_id: str, reason: str, max_interruptions: int, add_run_seconds: float = 0.0
    ) -> str | None:
        """As `db.JobDB.interrupt`, for a job this process holds the lease of."""
        r = self._exec(
            f"SELECT interruptions FROM {_JOBS} "
            "WHERE id = %(id)s AND status = 'running' AND lease_owner = %(me)s",
            {"id": job_id},
        ).fetchone()
        if r is None:
            return None
        count = int(r["interruptions"]) + 1
        args = {
            "id": job_id,
            "n": count,
            "now": time.time(),
            "spent": max(0.0, add_run_seconds),
        }
        if count > max_interruptions:
            args["error"] = f"{reason}; interrupted {count} times, not resumed again"
            sql = "status = 'failed', finished_at = %(now)s, error = %(error)s, lease_owner = NULL"
            status = "failed"
        else:
            args["note"] = f"{reason}; resumes from its checkpoint"
            sql = "status = 'queued', note = %(note)s, lease_owner = NULL"
            status = "queued"
        cur = self._exec(
            f"UPDATE {_JOBS} SET {sql}, interruptions = %(n)s, updated_at = %(now)s, "
            "run_seconds = run_seconds + %(spent)s "
            "WHERE id = %(id)s AND status = 'running' AND lease_owner = %(me)s",
            args,
        )
        return status if cur.rowcount == 1 else None

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
        """An active job -> a final state; False when it had already ended (first one wins)
        or is not this process's to end (see below)."""
        if status not in FINAL:
            raise ValueError(f"not a final state: {status!r}")
        if not only_from or any(s not in ACTIVE for s in only_from):
            raise ValueError(f"only_from must name active states, got {only_from!r}")
        now = time.time()
        # A run ends only the running job it holds the lease of: if its lease ran out and
        # the job went back to the queue, the late word of the old worker changes nothing.
        which = (
            "status = 'running' AND lease_owner = %(me)s"
            if "running" in only_from
            else "status = 'queued'"
        )
        cur = self._exec(
            f"UPDATE {_JOBS} SET status = %(status)s, error = %(error)s, "
            "finished_at = %(now)s, updated_at = %(now)s, "
            "progress = COALESCE(%(progress)s, progress), "
            "metrics = COALESCE(%(metrics)s::jsonb, metrics), "
            "history = COALESCE(%(history)s::jsonb, history), note = COALESCE(%(note)s, note), "
            "run_seconds = run_seconds + %(spent)s, lease_owner = NULL "
            f"WHERE id = %(id)s AND {which}",
            {
                "id": job_id,
                "status": status,
                "error": error,
                "now": now,
                "progress": progress,
                "metrics": _json(metrics),
                "history": _json(history),
                "note": note,
                "spent": max(0.0, add_run_seconds),
            },
        )
        return cur.rowcount == 1

    def recover(self, max_interruptions: int) -> dict[str, str]:
        """Many processes share this store: a running job is dead only when its lease ran
        out, which `expire_leases` decides."""
        return self.expire_leases(max_interruptions)

    # ---- events ----------------------------------------------------------------------
    def add_event(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        self._exec(
            f"INSERT INTO {_EVENTS} (job_id, event, data, at) "
            "VALUES (%(id)s, %(event)s, %(data)s::jsonb, %(now)s)",
            {"id": job_id, "event": event, "data": _dumps(data), "now": time.time()},
        )

    def last_event(self, job_id: str) -> int:
        """The newest event's number for this job (0 when it has none)."""
        r = self._exec(
            f"SELECT COALESCE(MAX(seq), 0) AS seq FROM {_EVENTS} WHERE job_id = %(id)s",
            {"id": job_id},
        ).fetchone()
        return int(r["seq"]) if r is not None else 0

    def events_after(
        self, job_id: str, after: int, limit: int = 200
    ) -> list[tuple[int, str, dict[str, Any]]]:
        rows = self._exec(
            f"SELECT seq, event, data FROM {_EVENTS} WHERE job_id = %(id)s AND seq > %(after)s "
            "ORDER BY seq LIMIT %(limit)s",
            {"id": job_id, "after": after, "limit": limit},
        ).fetchall()
        return [(int(r["seq"]), r["event"], r["data"]) for r in rows]

    def prune_events(self, older_than_s: float) -> int:
        """Drop the events of jobs that ended more than `older_than_s` ago: a stream on an
        ended job sends its final record, not its events."""
        cur = self._exec(
            f"DELETE FROM {_EVENTS} e USING {_JOBS} j WHERE e.job_id = j.id "
            "AND j.status = ANY(%(final)s) AND j.finished_at < %(before)s",
            {"final": list(FINAL), "before": time.time() - older_than_s},
        )
        return cur.rowcount

    # ---- reads -----------------------------------------------------------------------
    def get(self, job_id: str) -> JobRow | None:
        r = self._exec(
            f"SELECT {_ROW_FIELDS} FROM {_JOBS} WHERE id = %(id)s", {"id": job_id}
        ).fetchone()
        return None if r is None else _row(r)

    def list(self, statuses: Iterable[str] | None = None, limit: int = 100) -> list[JobRow]:
        """Newest first; a negative limit is no limit (as in SQLite)."""
        wanted = list(statuses) if statuses is not None else []
        where = "WHERE status = ANY(%(wanted)s)" if wanted else ""
        rows = self._exec(
            f"SELECT {_ROW_FIELDS} FROM {_JOBS} {where} ORDER BY seq DESC LIMIT %(limit)s",
            {"wanted": wanted, "limit": None if limit < 0 else limit},
        ).fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for r in self._exec(f"SELECT status, COUNT(*) AS n FROM {_JOBS} GROUP BY status"):
            out[r["status"]] = int(r["n"])
        return out

    def ids(self) -> set[str]:
        return {r["id"] for r in self._exec(f"SELECT id FROM {_JOBS}")}

    def lease_owner(self, job_id: str) -> str | None:
        r = self._exec(
            f"SELECT lease_owner FROM {_JOBS} WHERE id = %(id)s", {"id": job_id}
        ).fetchone()
        return None if r is None else r["lease_owner"]
