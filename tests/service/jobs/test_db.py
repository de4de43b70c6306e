"""Job records in SQLite: states, first-writer-wins, recovery after a crash, schema versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.jobs.db import SCHEMA_VERSION, JobDB, JobDBError


@pytest.fixture
def db(tmp_path: Path) -> JobDB:
    d = JobDB(tmp_path / "jobs.sqlite3")
    yield d
    d.close()


def _add(db: JobDB, job_id: str, name: str = "m") -> None:
    db.insert(job_id, name, "gru", {"epochs": 1}, {"kind": "text", "bytes": 3})


def test_insert_get_list_newest_first_and_filter(db: JobDB) -> None:
    for i in range(3):
        _add(db, f"{i:016x}")
    assert [r.id for r in db.list()] == [f"{i:016x}" for i in (2, 1, 0)]
    row = db.get(f"{0:016x}")
    assert row is not None and row.status == "queued" and row.request == {"epochs": 1}
    assert row.corpus == {"kind": "text", "bytes": 3} and row.progress == 0.0
    assert db.get("nope") is None
    assert db.mark_running(f"{1:016x}")
    assert [r.id for r in db.list(["running"])] == [f"{1:016x}"]
    assert db.counts() == {"queued": 2, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert db.next_queued().id == f"{0:016x}"  # oldest first


def test_wal_mode_and_schema_version(db: JobDB, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "jobs.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JobDBError, match="newer"):
        JobDB(path)


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JobDBError, match="cannot open"):
        JobDB(path)


def test_first_final_state_wins(db: JobDB) -> None:
    _add(db, "a" * 16)
    assert db.mark_running("a" * 16)
    assert not db.mark_running("a" * 16)  # already running
    assert db.finish("a" * 16, "cancelled")
    assert not db.finish("a" * 16, "succeeded")  # a late success does not overwrite
    row = db.get("a" * 16)
    assert row.status == "cancelled" and row.finished_at is not None


def test_cancel_only_while_queued(db: JobDB) -> None:
    _add(db, "b" * 16)
    db.mark_running("b" * 16)
    # A worker claimed it: a queued-only cancel must not mark it cancelled under that worker.
    assert not db.finish("b" * 16, "cancelled", only_from=("queued",))
    assert db.get("b" * 16).status == "running"


def test_version_recorded_once(db: JobDB) -> None:
    _add(db, "c" * 16)
    assert db.record_version("c" * 16, 3) == 3
    assert db.record_version("c" * 16, 4) == 3  # a second save is never recorded
    with pytest.raises(KeyError):
        db.record_version("d" * 16, 1)


def test_progress_only_while_running(db: JobDB) -> None:
    _add(db, "e" * 16)
    assert not db.update_progress("e" * 16, progress=0.5)
    db.mark_running("e" * 16)
    nan = float("nan")
    assert db.update_progress(
        "e" * 16,
        progress=0.5,
        metrics={"loss": nan, "step": 3},
        history=[{"epoch": 1, "val_ppl": 9.5}],
        resumed_step=7,
        add_run_seconds=2.0,
    )
    row = db.get("e" * 16)
    assert row.progress == 0.5 and row.metrics == {"loss": None, "step": 3}
    assert row.history == [{"epoch": 1, "val_ppl": 9.5}] and row.resumed_step == 7
    assert row.run_seconds == pytest.approx(2.0)


def test_recover_requeues_running_jobs_then_gives_up(db: JobDB) -> None:
    _add(db, "f" * 16)
    _add(db, "1" * 16)
    for attempt in range(1, 4):
        assert db.mark_running("f" * 16)
        out = db.recover(max_interruptions=2)
        row = db.get("f" * 16)
        if attempt <= 2:
            assert out == {"f" * 16: "queued"} and row.status == "queued"
            assert row.interruptions == attempt and "resumes" in row.note
        else:
            assert out == {"f" * 16: "failed"} and row.status == "failed"
            assert "interrupted 3 times" in row.error
    assert db.get("1" * 16).status == "queued"  # queued jobs are left alone
    assert db.get("f" * 16).attempts == 3


def test_requeue_after_shutdown_does_not_count_as_interruption(db: JobDB) -> None:
    _add(db, "2" * 16)
    db.mark_running("2" * 16)
    assert db.requeue("2" * 16, "shut down", add_run_seconds=1.5)
    row = db.get("2" * 16)
    assert row.status == "queued" and row.interruptions == 0 and row.run_seconds == 1.5


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = JobDB(path)
    _add(first, "3" * 16)
    first.mark_running("3" * 16)
    first.close()
    second = JobDB(path)
    try:
        assert second.get("3" * 16).status == "running"
        assert second.ids() == {"3" * 16}
    finally:
        second.close()
