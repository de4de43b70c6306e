"""Jobs in PostgreSQL end to end: real servers that accept, real `gatehouse worker`s that run.

Two workers race for ten jobs and run each once; a worker `kill -9`'d mid-job is noticed by
its lease and its job resumed by the other one from its checkpoint, one version in the end;
a job accepted by server A streams its events on server B; a cancel on a server that runs
nothing reaches the worker.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from models import store
from tests.helpers import REPO, ServerProcess

from .test_recovery import wait_until, worker_pids

KEY = "pg-jobs-key"
SECRET = "not-for-logs-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}
# A posted text, not a built-in corpus: less for each of the ten workers to build.
TEXT = " ".join(f"the {a} saw a {b} ." for a in ("cat", "dog", "owl") for b in ("fox", "hen"))
TINY = {
    "arch": "rnn",
    "corpus": {"text": " ".join([TEXT] * 20)},
    "epochs": 1,
    "max_steps": 2,
    "hidden_size": 8,
    "embedding_size": 8,
    "batch_size": 4,
    "bptt": 8,
}
# Short enough for the test to see a killed worker's job move soon, long enough that a
# live worker on a busy machine keeps its lease (it renews every third of it).
KILL_LEASE_S = 4.0
STEPS = 2000  # the killed job's
_CONSOLE = "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))"


class Worker:
    """`gatehouse worker` (or `python -m service.jobs.claimer`) with its log in a file."""

    def __init__(
        self,
        model_dir: Path,
        url: str,
        via_cli: bool = False,
        slots: int = 1,
        lease_s: float = 15.0,
    ) -> None:
        n = len(list(model_dir.parent.glob("worker-*.log")))
        self.log_path = model_dir.parent / f"worker-{n}.log"
        # via_cli: the `gatehouse worker` subcommand, as the console script dispatches it.
        entry = ["-c", _CONSOLE, "worker"] if via_cli else ["-m", "service.jobs.claimer"]
        cmd = [sys.executable, *entry, "--model-dir", str(model_dir), "--job-store", url]
        cmd += [
            "--job-lease-s",
            str(lease_s),
            "--max-running-jobs",
            str(slots),
            "--log-level",
            "info",
        ]
        self._log = open(self.log_path, "wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_until(
            lambda: "running jobs of" in self.log() or self.proc.poll() is not None,
            300,  # a busy machine: imports alone took over 90 s under a load of 30
            "the worker to start",
        )
        assert self.proc.poll() is None, self.log()

    def ran(self) -> list[str]:
        return re.findall(r"job ([0-9a-f]+) running in worker pid", self.log())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def server(model_dir: Path, url: str) -> ServerProcess:
    s = ServerProcess(
        model_dir,
        "--no-bootstrap",
        "--api-key",
        KEY,
        "--job-store",
        url,
        "--no-run-jobs",
        "--max-queued-jobs",
        "16",
    )
    s.wait_ready(path="/healthz")
    return s


def job(s: ServerProcess, job_id: str) -> dict:
    r = httpx.get(f"{s.url}/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def submit(s: ServerProcess, body: dict) -> str:
    r = httpx.post(f"{s.url}/train", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


def with_password(url: str) -> str:
    """The URL with a password in it (the test cluster trusts loopback and ignores it)."""
    return url.replace("gatehouse@", f"gatehouse:{SECRET}@", 1)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_two_workers_race_for_ten_jobs_each_runs_once(tmp_path: Path, pg_url: str) -> None:
    pg_url = with_password(pg_url)
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    procs: list = []
    try:
        procs.append(a := server(model_dir, pg_url))
        # Five jobs at a time each: training children run at idle priority, so on a busy
        # machine ten one after another would take minutes; the claims race all the same.
        workers = [
            Worker(model_dir, pg_url, slots=5),
            Worker(model_dir, pg_url, via_cli=True, slots=5),
        ]
        procs += workers
        for w in workers:
            w.wait_ready()
        ids = [submit(a, {**TINY, "name": "race", "seed": i}) for i in range(10)]

        def all_ended() -> list[dict] | None:
            found = [job(a, i) for i in ids]
            return found if all(j["status"] in ("succeeded", "failed") for j in found) else None

        ended = wait_until(all_ended, 1200, "the ten jobs to end")
        assert [j["status"] for j in ended] == ["succeeded"] * 10, ended
        assert all(j["attempts"] == 1 and j["interruptions"] == 0 for j in ended)
        ran = workers[0].ran() + workers[1].ran()
        assert sorted(ran) == sorted(ids)  # each claimed by one worker, once
        versions = store.list_versions(model_dir, "race")
        owners = [store.read_meta(model_dir, "race", v).get("job_id") for v in versions]
        assert len(versions) == 10 and sorted(owners) == sorted(ids)
        assert sorted(j["model"]["version"] for j in ended) == versions

        # A cancel on the server, which runs nothing: the worker's lease beat reads it.
        # Tens of thousands of steps: on a quiet machine 50 epochs of TINY's corpus ended in
        # the seconds before the worker's lease beat read the cancel.
        long_body = {**TINY, "name": "long", "max_steps": None, "epochs": 100}
        long_id = submit(a, {**long_body, "corpus": {"text": " ".join([TEXT] * 400)}})
        wait_until(lambda: job(a, long_id)["metrics"].get("step", 0) > 0, 300, "it to train")
        r = httpx.delete(f"{a.url}/jobs/{long_id}", headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert store.list_versions(model_dir, "long") == []

        # The store URL's password: nowhere in logs, /metrics or a process title.
        shown = [a.log(), *(w.log() for w in workers), httpx.get(f"{a.url}/metrics").text]
        shown += [cmdline(p.proc.pid) for p in procs]
        assert not [text for text in shown if SECRET in text]
        assert "postgresql://***@" in workers[0].log()
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)


def test_a_killed_worker_is_resumed_by_another_with_events_on_any_server(
    tmp_path: Path, pg_url: str
) -> None:
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    procs: list = []
    lines: list[str] = []
    try:
        procs.append(a := server(model_dir, pg_url))
        procs.append(b := server(model_dir, pg_url))
        workers = [Worker(model_dir, pg_url, lease_s=KILL_LEASE_S) for _ in range(2)]
        procs += workers
        for w in workers:
            w.wait_ready()
        # Progress reaches the record every half second: at a few ms a step, 300 steps could
        # end between seeing step 20 and the kill on a quiet machine; 2,000 cannot.
        body = {**TINY, "name": "phoenix", "arch": "gru", "max_steps": STEPS, "hidden_size": 16}
        body["corpus"] = {"builtin": "longrange"}  # long enough for the steps in one epoch
        job_id = submit(a, body)

        def follow() -> None:  # server B streams a job server A accepted
            with httpx.stream("GET", f"{b.url}/jobs/{job_id}/events", timeout=600) as r:
                lines.extend(line for line in r.iter_lines() if line.startswith("event: "))

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        owner = wait_until(
            lambda: next((w for w in workers if job_id in w.ran()), None), 90, "a claim"
        )
        other = workers[1 - workers.index(owner)]
        wait_until(lambda: job(b, job_id)["metrics"].get("step", 0) > 20, 300, "steps")
        owner.proc.kill()  # kill -9: no lease renewed, no requeue written
        owner.proc.wait()
        final = wait_until(
            lambda: (j := job(b, job_id))["status"] in ("succeeded", "failed") and j,
            900,
            "the job to end on the other worker",
        )
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2 and final["interruptions"] == 1
        assert final["resumed_from_step"] > 20
        assert final["metrics"]["steps"] == STEPS
        assert other.ran() == [job_id]
        versions = store.list_versions(model_dir, "phoenix")
        owners = [store.read_meta(model_dir, "phoenix", v).get("job_id") for v in versions]
        assert owners == [job_id]  # one version
        assert worker_pids(job_id) == []  # the killed worker's child did not linger
        reader.join(30)
        assert lines[0] == "event: status" and lines[-1] == "event: end"
        assert "event: progress" in lines and "event: epoch" in lines
        assert job(a, job_id) == final
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
