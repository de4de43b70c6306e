"""A job outlives its server: graceful stop, then `kill -9`, each followed by a restart.

After each, the job resumes from its checkpoint in a fresh worker, the old worker is gone,
and in the end exactly one model version carries the job's id.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from models import store
from tests.helpers import ServerProcess

KEY = "recovery-key"
BODY = {
    "name": "phoenix",
    "arch": "gru",
    "corpus": {"builtin": "longrange"},
    "epochs": 1,
    "max_steps": 1000,
    "hidden_size": 16,
    "embedding_size": 16,
    "batch_size": 4,
    "bptt": 8,
}


def worker_pids(job_id: str) -> list[int]:
    """Live worker processes of this job, found by their command line."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if b"service.jobs.worker" in cmd and any(job_id.encode() in c for c in cmd):
            if state != b"Z":  # a zombie has exited; only its parent's bookkeeping is left
                pids.append(int(entry))
    return pids


def wait_until(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def get_job(server: ServerProcess, job_id: str) -> dict:
    return httpx.get(f"{server.url}/jobs/{job_id}", timeout=10).json()


def start(model_dir: Path) -> ServerProcess:
    s = ServerProcess(model_dir, "--no-bootstrap", "--api-key", KEY)
    s.wait_ready(path="/healthz")
    return s


def test_job_resumes_after_shutdown_and_after_kill_9(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    servers: list[ServerProcess] = []
    try:
        servers.append(first := start(model_dir))
        r = httpx.post(f"{first.url}/train", json=BODY, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        wait_until(lambda: get_job(first, job_id)["metrics"].get("step", 0) > 30, 90, "steps")

        # Graceful stop: the worker checkpoints, the job waits in the queue, not counted as lost.
        assert first.stop(signal.SIGTERM) == 0
        assert worker_pids(job_id) == []

        servers.append(second := start(model_dir))
        found = wait_until(
            lambda: (
                (j := get_job(second, job_id))["attempts"] == 2 and j["resumed_from_step"] and j
            ),
            60,
            "the resumed attempt",
        )
        assert found["status"] == "running" and found["interruptions"] == 0
        first_resume = found["resumed_from_step"]
        assert first_resume > 30
        wait_until(
            lambda: get_job(second, job_id)["metrics"].get("step", 0) > first_resume + 30,
            90,
            "progress after resuming",
        )
        pids = worker_pids(job_id)
        assert len(pids) == 1

        # kill -9: nothing runs the server's shutdown; the orphaned worker must not linger.
        second.stop(signal.SIGKILL)
        wait_until(lambda: worker_pids(job_id) == [], 40, "the orphaned worker to exit")

        servers.append(third := start(model_dir))
        final = wait_until(
            lambda: (j := get_job(third, job_id))["status"] in ("succeeded", "failed") and j,
            120,
            "the job to end",
        )
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 3 and final["interruptions"] == 1
        assert final["resumed_from_step"] > first_resume
        assert final["metrics"]["steps"] == BODY["max_steps"]
        assert final["model"] == {"name": "phoenix", "version": 1}

        versions = store.list_versions(model_dir, "phoenix")
        owners = [store.read_meta(model_dir, "phoenix", v).get("job_id") for v in versions]
        assert owners == [job_id]  # one version, never a partial or a duplicate
        assert not any(p.name.startswith(".tmp-") for p in (model_dir / "phoenix").iterdir())
        r = httpx.post(f"{third.url}/predict", json={"text": "i grew up in", "model": "phoenix"})
        assert r.status_code == 200 and r.json()["version"] == 1
    finally:
        for s in servers:
            s.stop(signal.SIGKILL)


def test_shutdown_ends_event_streams_and_requeues(tmp_path: Path) -> None:
    """An open SSE stream must not hold a graceful stop for the drain timeout."""
    model_dir = tmp_path / "models"
    server = start(model_dir)
    try:
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {**BODY, "epochs": 20, "max_steps": None}  # far longer than the drain timeout
        job_id = httpx.post(f"{server.url}/train", json=body, headers=headers).json()["job_id"]
        events: list[str] = []
        with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=60) as r:
            lines = r.iter_lines()
            events.append(next(lines))  # the stream is open: its first event arrived
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            events += [line for line in lines if line.startswith("event: ")]
        assert server.proc.wait(30) == 0
        assert time.monotonic() - t0 < 20.0  # not the 30 s drain timeout
        assert events[0] == "event: status" and events[-1] == "event: end"
        assert worker_pids(job_id) == []
    finally:
        server.stop(signal.SIGKILL)
    again = start(model_dir)
    try:
        found = get_job(again, job_id)
        assert found["status"] in ("queued", "running") and found["interruptions"] == 0
        r = httpx.delete(f"{again.url}/jobs/{job_id}", headers=headers, timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    finally:
        again.stop(signal.SIGKILL)
