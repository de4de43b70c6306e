"""The PostgreSQL job store against a real server: transitions, claims, leases, events."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.jobs.db import JobDBError
from service.jobs.pg import PgJobDB

psycopg = pytest.importorskip("psycopg")

CORPUS = {"kind": "builtin", "name": "longrange", "description": "builtin longrange"}


def store(url: str, who: str = "w1", lease_s: float = 30.0) -> PgJobDB:
    return PgJobDB(url, who, lease_s)


def add(db: PgJobDB, n: int) -> list[str]:
    ids = [f"job{i:03d}" for i in range(n)]
    for job_id in ids:
        db.insert(job_id, "m", "gru", {"epochs": 1, "lr": float("nan")}, CORPUS)
    return ids


def test_transitions_first_writer_wins(pg_url: str) -> None:
    db = store(pg_url)
    (job_id,) = add(db, 1)
    row = db.get(job_id)
    assert row is not None and row.status == "queued" and row.request["lr"] is None  # NaN
    claimed = db.claim()
    assert claimed is not None and claimed.id == job_id and claimed.status == "running"
    assert claimed.attempts == 1 and db.claim() is None
    assert db.update_progress(job_id, progress=0.5, metrics={"loss": float("inf")})
    assert db.get(job_id).metrics == {"loss": None}  # type: ignore[union-attr]
    assert db.record_version(job_id, 3) == 3
    assert db.record_version(job_id, 4) == 3  # the first version recorded stays
    assert db.finish(job_id, "succeeded", progress=1.0)
    assert not db.finish(job_id, "cancelled")  # it ended already: nothing changes
    assert not db.update_progress(job_id, progress=0.1)
    final = db.get(job_id)
    assert final is not None and final.status == "succeeded" and final.progress == 1.0
    assert db.counts()["succeeded"] == 1 and db.ids() == {job_id}
    with pytest.raises(ValueError):
        db.finish(job_id, "running")


def test_cancel_of_a_queued_job_only_while_queued(pg_url: str) -> None:
    db = store(pg_url)
    a, b = add(db, 2)
    assert db.finish(a, "cancelled", only_from=("queued",))
    assert db.claim().id == b  # type: ignore[union-attr]  # a cancelled job is never claimed
    assert not db.finish(b, "cancelled", only_from=("queued",))  # running now
    assert [r.id for r in db.list(["running"])] == [b]
    assert [r.id for r in db.list()] == [b, a]  # newest first


def test_only_the_lease_owner_ends_a_running_job(pg_url: str) -> None:
    mine, other = store(pg_url, "w1"), store(pg_url, "w2")
    (job_id,) = add(mine, 1)
    assert mine.claim() is not None
    assert not other.update_progress(job_id, progress=0.9)
    assert not other.finish(job_id, "failed", error="not mine")
    assert other.requeue(job_id, "not mine") is False
    assert other.interrupt(job_id, "not mine", 3) is None
    assert other.heartbeat(job_id) == (False, False)
    assert mine.heartbeat(job_id) == (True, False)
    assert other.request_cancel(job_id)  # anyone may ask; the owner's heartbeat reads it
    assert mine.heartbeat(job_id) == (True, True)
    assert mine.finish(job_id, "cancelled")
    assert not other.request_cancel(job_id)


def test_claims_skip_rows_locked_by_another_claimer(pg_url: str) -> None:
    db = store(pg_url)
    first, second = add(db, 2)
    with psycopg.connect(pg_url, autocommit=True) as holder, holder.transaction():
        # Another claimer in the middle of taking `first`: its row is locked.
        holder.execute("SELECT id FROM gatehouse_jobs WHERE id = %s FOR UPDATE", (first,))
        done: list[str | None] = []
        t = threading.Thread(target=lambda: done.append(getattr(db.claim(), "id", None)))
        t.start()
        t.join(10)
        assert not t.is_alive(), "claim waited on a locked row"
        assert done == [second]


def test_two_concurrent_claimers_share_the_queue_without_overlap(pg_url: str) -> None:
    ids = add(store(pg_url), 40)
    claimers = [store(pg_url, "a"), store(pg_url, "b")]
    start = threading.Barrier(2)

    def drain(db: PgJobDB) -> list[str]:
        start.wait()
        got = []
        while (row := db.claim()) is not None:
            got.append(row.id)
        return got

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(drain, claimers)
    assert sorted(a + b) == ids and not set(a) & set(b)
    rows = claimers[0].list(limit=-1)
    assert all(r.status == "running" and r.attempts == 1 for r in rows)


def test_an_expired_lease_requeues_then_fails_the_job(pg_url: str) -> None:
    dead, alive = store(pg_url, "dead", lease_s=1.0), store(pg_url, "alive", lease_s=1.0)
    (job_id,) = add(dead, 1)
    assert dead.claim() is not None
    assert alive.expire_leases(3) == {}  # the lease still runs
    time.sleep(1.3)
    assert alive.expire_leases(3) == {job_id: "queued"}
    row = alive.get(job_id)
    assert row is not None and row.status == "queued" and row.interruptions == 1
    assert "resumes from its checkpoint" in (row.note or "")
    assert dead.heartbeat(job_id) == (False, False)  # the dead worker's writes are refused
    assert not dead.finish(job_id, "failed", error="late")
    taken = alive.claim()
    assert taken is not None and taken.attempts == 2
    assert alive.lease_owner(job_id) == "alive"
    for _ in range(3):  # keeps losing its worker: fails after the third resume
        time.sleep(1.3)
        alive.expire_leases(3)
        alive.claim()
    final = alive.get(job_id)
    assert final is not None and final.status == "failed" and final.interruptions == 4
    assert "not resumed again" in (final.error or "")


def test_a_cancel_asked_of_a_dead_worker_ends_the_job_when_its_lease_runs_out(
    pg_url: str,
) -> None:
    dead, alive = store(pg_url, "dead", lease_s=1.0), store(pg_url, "alive", lease_s=1.0)
    (job_id,) = add(dead, 1)
    dead.claim()
    assert alive.request_cancel(job_id)
    time.sleep(1.3)
    assert alive.expire_leases(3) == {job_id: "cancelled"}
    assert alive.claim() is None  # never trained again
    row = alive.get(job_id)
    assert row is not None and row.status == "cancelled" and row.finished_at is not None


def test_events_are_kept_in_order_and_pruned_after_the_end(pg_url: str) -> None:
    db = store(pg_url)
    (job_id,) = add(db, 1)
    assert db.last_event(job_id) == 0
    for step in range(5):
        db.add_event(job_id, "progress", {"step": step, "loss": float("nan")})
    got = db.events_after(job_id, 0)
    assert [d["step"] for _, _, d in got] == list(range(5)) and got[0][2]["loss"] is None
    assert db.last_event(job_id) == got[-1][0]
    assert db.events_after(job_id, got[2][0]) == got[3:]
    db.claim()
    db.finish(job_id, "succeeded")
    assert db.prune_events(older_than_s=3600) == 0  # ended just now: kept
    assert db.prune_events(older_than_s=-1) == 5


def test_replicas_starting_together_create_the_schema_once(pg_url: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        opened = list(pool.map(lambda i: store(pg_url, f"r{i}"), range(6)))
    add(opened[0], 1)
    assert all(db.counts()["queued"] == 1 for db in opened)
    again = store(pg_url, "later")  # opening an up-to-date schema changes nothing
    assert again.counts()["queued"] == 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE gatehouse_schema SET version = 99")
    with pytest.raises(JobDBError, match="newer"):
        store(pg_url, "old")


def test_an_unreachable_store_names_it_without_its_password() -> None:
    url = "postgresql://gatehouse:s3cret-pw@127.0.0.1:1/none"
    with pytest.raises(JobDBError) as caught:
        store(url)
    assert "s3cret-pw" not in str(caught.value) and "127.0.0.1" in str(caught.value)
