"""Jobs when things break, against real servers: a worker whose writes fail, a second server
on the same store, a request over the memory budget.

The failing writes are real: the worker process gets `RLIMIT_FSIZE` (set with prlimit from
outside, as an operator's limit or a filling disk would hit it), so its checkpoint write
fails inside the kernel with EFBIG, the error a file system gives when a file cannot grow.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import TINY_TEXT, ServerProcess
from tests.service.jobs.test_api import sse_events, wait_for

TINY = {"hidden_size": 16, "embedding_size": 16, "batch_size": 4, "bptt": 8, "epochs": 1}
BUDGET_MB = 1024


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    root = tmp_path_factory.mktemp("job-faults")
    env = {"GATEHOUSE_TRAIN_MEMORY_BUDGET_MB": str(BUDGET_MB), "GATEHOUSE_MAX_QUEUED_JOBS": "1"}
    owner = ServerProcess(root / "models", "--no-bootstrap", env=env)
    started = [owner]
    try:
        owner.wait_ready(path="/healthz")
        # Started second: the queue of the store is the first one's; this one only reports.
        other = ServerProcess(root / "models", "--no-bootstrap", env=env)
        started.append(other)
        other.wait_ready(path="/healthz")
        yield owner, other
    finally:
        for s in started:
            s.stop()


def post_train(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/train", json=body, timeout=30)


def worker_pid(server: ServerProcess, timeout: float = 30.0) -> int:
    """The server's training worker, as soon as it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
        time.sleep(0.02)
    raise AssertionError(f"no worker started:\n{server.log()[-3000:]}")


def test_a_second_server_streams_a_job_to_its_end(servers: tuple[ServerProcess, ...]) -> None:
    owner, other = servers
    body = {"name": "seen-twice", "arch": "gru", "corpus": {"text": TINY_TEXT * 20}, **TINY}
    r = post_train(other, body)
    assert r.status_code == 503 and "another server" in r.json()["message"]
    r = post_train(owner, body)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    started = time.monotonic()
    got = sse_events(other, job_id)  # would never end if it waited for events only
    assert got[0][0] == "status" and got[-1][0] == "end", got
    assert got[-1][1]["status"] == "succeeded", got[-1]
    assert time.monotonic() - started < 90
    assert [e for e, _ in sse_events(owner, job_id)] == ["status", "end"]
    r = httpx.delete(f"{other.url}/jobs/{job_id}", timeout=10)
    assert r.status_code == 409 and "already ended: succeeded" in r.json()["message"]


def test_a_worker_whose_writes_fail_ends_the_job_failed(
    servers: tuple[ServerProcess, ...], tmp_path_factory: pytest.TempPathFactory
) -> None:
    owner, other = servers
    body = {"name": "no-room", "arch": "lstm", "corpus": {"text": TINY_TEXT * 20}, **TINY}
    r = post_train(owner, body)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    pid = worker_pid(owner)
    # Below the size of the first checkpoint (weights and Adam's moments: tens of KB).
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (4096, 4096))
    got = sse_events(owner, job_id)
    assert got[-1][0] == "end", got
    final = got[-1][1]
    assert final["status"] == "failed", final
    assert "EFBIG" in final["error"] and "file size limit" in final["error"], final
    assert str(owner.model_dir) not in final["error"] and "/tmp" not in final["error"]
    assert sse_events(other, job_id)[-1][1]["status"] == "failed"
    # Truthful answers and a free slot: nothing left running, the next job is taken.
    r = httpx.delete(f"{owner.url}/jobs/{job_id}", timeout=10)
    assert r.status_code == 409 and "already ended: failed" in r.json()["message"], r.text
    running = httpx.get(f"{owner.url}/jobs", params={"status": "running"}, timeout=10)
    assert running.json()["jobs"] == []
    r = post_train(owner, {**body, "name": "room-again"})
    assert r.status_code == 202, r.text
    next_id = r.json()["job_id"]
    assert wait_for(owner, next_id, lambda j: j["status"] != "queued")["status"] != "failed"
    r = httpx.delete(f"{owner.url}/jobs/{next_id}", timeout=60)
    assert r.status_code in (200, 409), r.text


def test_training_over_the_memory_budget_is_refused(servers: tuple[ServerProcess, ...]) -> None:
    owner, _ = servers
    body = {"name": "too-big", "arch": "lstm", "corpus": {"text": TINY_TEXT}}
    r = post_train(owner, {**body, "batch_size": 256, "bptt": 256})
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    assert "GATEHOUSE_TRAIN_MEMORY_BUDGET_MB" in message and f"{BUDGET_MB} MiB" in message
    assert "activations" in message and "max_vocab" in message
    # The same shape with a small vocabulary fits: the estimate follows the sizes.
    r = post_train(owner, {**body, "batch_size": 256, "bptt": 256, "max_vocab": 100})
    assert r.status_code == 202, r.text
    r = httpx.delete(f"{owner.url}/jobs/{r.json()['job_id']}", timeout=60)
    assert r.status_code in (200, 409), r.text


def test_a_job_end_the_database_cannot_take_is_held_and_written_later(
    servers: tuple[ServerProcess, ...],
) -> None:
    """The server's own writes fail (its jobs database cannot grow): the job still ends."""
    owner, other = servers
    body = {"name": "held-end", "arch": "gru", "corpus": {"text": TINY_TEXT * 20}, **TINY}
    r = post_train(owner, body)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    wait_for(owner, job_id, lambda j: j["status"] == "running")
    wal = owner.model_dir / "jobs.sqlite3-wal"
    # SQLite appends to its write-ahead log: at this size limit every further commit fails.
    soft, hard = resource.prlimit(owner.proc.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(owner.proc.pid, resource.RLIMIT_FSIZE, (wal.stat().st_size, hard))
    try:
        got = sse_events(owner, job_id)
        assert got[-1][0] == "end" and got[-1][1]["status"] == "succeeded", got[-1]
        assert got[-1][1]["model"]["name"] == "held-end"
        assert "not yet written" in got[-1][1]["note"]
        r = httpx.delete(f"{owner.url}/jobs/{job_id}", timeout=10)
        assert r.status_code == 409 and "already ended: succeeded" in r.json()["message"]
        running = httpx.get(f"{owner.url}/jobs", params={"status": "running"}, timeout=10)
        assert running.json()["jobs"] == []
        assert wait_for(other, job_id, lambda j: True)["status"] == "running"  # on disk
    finally:
        resource.prlimit(owner.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
    stored = wait_for(other, job_id, lambda j: j["status"] != "running", timeout=30)
    assert stored["status"] == "succeeded" and stored["model"]["name"] == "held-end"
