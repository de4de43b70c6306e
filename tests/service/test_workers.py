"""`serve --workers N`: the refusal with in-process stores, and the supervisor's real children.

The supervisor test runs `service.supervisor.Supervisor` in its own process on a real socket
with real spawned servers: both answer on the one port, a worker killed with SIGKILL is
started again, and SIGTERM stops them all with exit status 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.helpers import REPO, ServerProcess, free_port, make_tiny_store

READY_LINE = "Application startup complete"

SUPERVISE = """
import sys
from pathlib import Path
from service.settings import Settings
from service.supervisor import Supervisor, bind
from service import logs

settings = Settings(
    model_dir=Path(sys.argv[1]), port=int(sys.argv[2]), workers=2, torch_threads=1,
    no_bootstrap=True,
)
logs.configure_logging("info")
sock = bind(settings)
sys.exit(Supervisor(settings, sock).run())
"""


def test_more_than_one_worker_with_in_process_stores_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(make_tiny_store(tmp_path / "models"), "--workers", "2")
    code = server.proc.wait(120)
    server.stop()
    log = server.log()
    assert code == 2, log
    (line,) = [ln for ln in log.splitlines() if "refusing --workers 2" in ln]
    assert "session_store" in line and "job_store" in line
    assert READY_LINE not in log  # no worker was ever started


def _workers(pid: int) -> set[int]:
    """The supervisor's server children (not multiprocessing's resource tracker)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:  # gone meanwhile
                continue
            if b"spawn_main" in cmdline:
                found.add(int(child))
    return found


def _wait(what: str, check: Callable[[], bool], log: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    store = make_tiny_store(tmp_path / "models")
    port = free_port()
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, str(store), str(port)],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in _workers(proc.pid) if proc.poll() is None else ():
            os.kill(pid, signal.SIGKILL)


def _socket_owner(pids: set[int], server_port: int, client_port: int) -> int | None:
    """The worker holding the server end of the connection from `client_port`."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":"), fields[2].split(":")
        if int(local[1], 16) == server_port and int(remote[1], 16) == client_port:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def _answering_worker(url: str, pids: set[int]) -> int | None:
    # A new connection each time: the kernel hands it to whichever worker accepts first.
    port = int(url.rsplit(":", 1)[1])
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        stream = client.get("/healthz").extensions["network_stream"]
        client_port = stream.get_extra_info("client_addr")[1]
        return _socket_owner(pids, port, client_port)


def test_workers_share_the_port_are_restarted_and_stop_cleanly(
    supervised: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    proc, url, log = supervised
    _wait("two workers ready", lambda: log.read_text().count(READY_LINE) == 2, log)
    first = _workers(proc.pid)
    assert len(first) == 2

    seen: set[int | None] = set()
    for _ in range(200):  # both processes accept on the one socket
        seen.add(_answering_worker(url, first))
        if seen >= first:
            break
    assert seen >= first, seen

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    _wait("a worker restarted", lambda: log.read_text().count(READY_LINE) == 3, log)
    now = _workers(proc.pid)
    assert len(now) == 2 and victim not in now and (first - {victim}) <= now
    assert "exited with -9" in log.read_text()
    for _ in range(10):
        r = httpx.post(url + "/predict", json={"text": "the sky"}, timeout=30)
        assert r.status_code == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, log.read_text()[-4000:]
    # Joined by the supervisor before it exited: nothing left running, not even a zombie.
    assert [pid for pid in now if Path(f"/proc/{pid}").exists()] == []


_STORES = {"session_store", "job_store"} <= set(Settings.model_fields)


@pytest.mark.skipif(not _STORES, reason="needs the session_store and job_store settings")
def test_workers_with_shared_stores_serve_and_stop(tmp_path: Path) -> None:
    from tests.daemons.postgres import postgres_server
    from tests.daemons.redis import redis_server

    with redis_server(tmp_path) as redis, postgres_server(tmp_path / "pg") as pg:
        args = ["--workers", "2", "--session-store", redis.url, "--job-store", pg.url]
        server = ServerProcess(make_tiny_store(tmp_path / "models"), "--no-bootstrap", *args)
        try:
            server.wait_ready(timeout=150)
            created = httpx.post(server.url + "/sessions", json={"model": "lstm"}, timeout=30)
            assert created.status_code == 201, created.text
            sid = created.json()["session_id"]
            headers = {"X-Session-Token": created.json()["session_token"]}
            words = "the keys to the old cabinet are on the".split()
            for word in words:  # a new connection each: the feeds land on either worker
                fed = httpx.post(
                    f"{server.url}/sessions/{sid}/feed",
                    json={"text": word, "top_k": 5},
                    headers=headers,
                    timeout=30,
                )
                assert fed.status_code == 200, fed.text
            whole = httpx.post(
                server.url + "/predict",
                json={"model": "lstm", "text": " ".join(words), "top_k": 5},
                timeout=30,
            ).json()
            got = {p["word"]: p["prob"] for p in fed.json()["predictions"]}
            want = {p["word"]: p["prob"] for p in whole["predictions"]}
            assert got.keys() == want.keys()
            assert all(abs(got[w] - want[w]) <= 1e-5 for w in want), (got, want)
        finally:
            code = server.stop()
        assert code == 0, server.log()[-4000:]
