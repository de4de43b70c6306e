"""Three real replicas on one model store behind a real nginx.

A mixed load (`/predict`, `/generate`, `/gates`) runs through the balancer while one replica
is killed with SIGKILL and started again on its port: the client sees no error. A version
written into the shared store afterwards is served by every replica within the reload
interval, and `/models` agrees across them.

With the shared stores (settings `session_store` and `job_store`, real Redis and PostgreSQL
started here), a session continues on a survivor of the replica that served its last feed
with the single-process answer, and a job submitted through the balancer runs once and its
version is served by all three. Without those settings the default stores are checked
instead: only the first replica runs the SQLite job queue.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from models import store as model_store
from service.settings import Settings
from tests.daemons import nginx as nginx_daemon
from tests.daemons._proc import find_binary
from tests.helpers import TINY_TEXT, ServerProcess, make_tiny_store, save_tiny_model

RELOAD_S = 1.0
CLIENTS = 4
STORES = {"session_store", "job_store"} <= set(Settings.model_fields)
TINY = {"hidden_size": 16, "embedding_size": 16, "batch_size": 4, "bptt": 8, "epochs": 1}

try:
    find_binary("nginx", "/usr/sbin")
except Exception as e:  # the Debian package is installed by `make system-deps`
    pytest.skip(f"nginx is not installed: {e}", allow_module_level=True)


def replica(model_dir: Path, stores: list[str], port: int | None = None) -> ServerProcess:
    # Room for every client's /gates at once: the default heavy-queue bound (2) would refuse
    # some with 503 while one replica carries the load of two.
    args = ["--no-bootstrap", "--reload-interval-s", str(RELOAD_S), "--max-gate-queue", "16"]
    args += stores
    server = ServerProcess(model_dir, *args, *(["--port", str(port)] if port else []))
    if port:  # the later --port wins: the replica comes back where nginx expects it
        server.port, server.url = port, f"http://127.0.0.1:{port}"
    return server


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The flags that put sessions in Redis and jobs in PostgreSQL, when the settings exist."""
    if not STORES:
        yield []
        return
    from tests.daemons.postgres import postgres_server
    from tests.daemons.redis import redis_server

    root = tmp_path_factory.mktemp("stores")
    with redis_server(root) as redis, postgres_server(root / "pg") as pg:
        yield ["--session-store", redis.url, "--job-store", pg.url]


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, stores: list[str]
) -> Iterator[list[ServerProcess]]:
    root = tmp_path_factory.mktemp("replicas")
    models = make_tiny_store(root / "models")
    servers: list[ServerProcess] = []
    try:
        # The first one started holds the store's SQLite job queue; the others follow.
        servers.append(replica(models, stores))
        servers[0].wait_ready(timeout=120)
        servers += [replica(models, stores), replica(models, stores)]
        for s in servers[1:]:
            s.wait_ready(timeout=120)
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def balancer(
    cluster: list[ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[nginx_daemon.Nginx]:
    with nginx_daemon.nginx(tmp_path_factory.mktemp("nginx"), [s.port for s in cluster]) as lb:
        yield lb


def restart(cluster: list[ServerProcess], index: int, stores: list[str]) -> None:
    old = cluster[index]
    cluster[index] = replica(old.model_dir, stores, old.port)
    cluster[index].wait_ready(timeout=120)


REQUESTS = [
    ("/predict", {"text": "the clouds are in the", "top_k": 3}),
    ("/generate", {"text": "i grew up in", "max_words": 4, "seed": 1}),
    ("/gates", {"text": "the key to the old cabinets", "model": "lstm"}),
]


def _load(url: str, stop: threading.Event, seen: Counter[str], errors: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            path, body = REQUESTS[i % len(REQUESTS)]
            i += 1
            try:
                r = (
                    client.post(path, json=body)
                    if path != "/gates"
                    else client.get(path, params=body)
                )
                r.json()  # a body cut short by the kill would not parse
            except (httpx.HTTPError, ValueError) as e:
                errors.append(f"{path}: {type(e).__name__}: {e}")
                continue
            if r.status_code != 200:
                errors.append(f"{path}: {r.status_code} {r.text[:200]}")
            seen[path] += 1


def test_a_replica_killed_under_load_costs_no_request(
    cluster: list[ServerProcess], balancer: nginx_daemon.Nginx, stores: list[str]
) -> None:
    stop, seen, errors = threading.Event(), Counter[str](), []
    with ThreadPoolExecutor(CLIENTS) as pool:
        workers = [pool.submit(_load, balancer.url, stop, seen, errors) for _ in range(CLIENTS)]
        try:
            time.sleep(2.0)
            victim = cluster[1]
            victim.stop(sig=9)
            time.sleep(1.0)  # the load runs on two replicas meanwhile
            restart(cluster, 1, stores)
            time.sleep(2.0)  # and again on all three
        finally:
            stop.set()
            for w in workers:
                w.result()
    assert errors == [], errors[:5]
    assert min(seen[path] for path, _ in REQUESTS) > 0, seen
    assert victim.proc.returncode == -9


def _models(server: ServerProcess) -> dict[str, int]:
    body = httpx.get(server.url + "/models", timeout=10).json()
    return {m["name"]: m["version"] for m in body["models"]}


def test_every_replica_serves_a_new_version_within_the_reload_interval(
    cluster: list[ServerProcess],
) -> None:
    before = [_models(s) for s in cluster]
    assert before[0] == before[1] == before[2]
    version = save_tiny_model(cluster[0].model_dir, "gru", "gru", seed=7)
    assert version == before[0]["gru"] + 1
    written = time.monotonic()
    waiting = list(cluster)
    while waiting and time.monotonic() - written < 10 * RELOAD_S + 10:
        waiting = [s for s in waiting if _models(s).get("gru") != version]
        time.sleep(0.1)
    assert waiting == [], "a replica never picked up the new version"
    # A store scan every RELOAD_S plus the load itself; generous for a busy machine.
    assert time.monotonic() - written < 3 * RELOAD_S + 5
    after = [_models(s) for s in cluster]
    assert after[0] == after[1] == after[2] == {**before[0], "gru": version}
    for s in cluster:
        r = httpx.post(s.url + "/predict", json={"model": "gru", "text": "the sky"}, timeout=10)
        assert r.status_code == 200 and r.json()["version"] == version


def test_only_the_first_replica_runs_the_sqlite_job_queue(tmp_path: Path) -> None:
    """Two replicas on one store with the default SQLite job store (the module's cluster uses
    PostgreSQL where it is installed): the second answers /train with 503."""
    models = make_tiny_store(tmp_path / "models")
    first = replica(models, [])
    servers = [first]
    try:
        first.wait_ready(timeout=120)
        servers.append(second := replica(models, []))
        second.wait_ready(timeout=120)
        body = {"name": "replicated", "arch": "gru", "corpus": {"text": TINY_TEXT}, **TINY}
        r = httpx.post(second.url + "/train", json=body, timeout=30)
        assert r.status_code == 503, r.text
        assert "another server" in r.json()["message"]
    finally:
        for s in servers:
            s.stop()


def _top(predictions: list[dict[str, float]]) -> dict[str, float]:
    return {p["word"]: p["prob"] for p in predictions}


@pytest.mark.skipif(not STORES, reason="needs the session_store and job_store settings")
def test_a_session_continues_on_a_survivor(
    cluster: list[ServerProcess], balancer: nginx_daemon.Nginx, stores: list[str]
) -> None:
    opened = httpx.post(balancer.url + "/sessions", json={"model": "lstm"}, timeout=30)
    assert opened.status_code == 201, opened.text
    sid, token = opened.json()["session_id"], opened.json()["session_token"]
    headers = {"X-Session-Token": token}
    first, second = "the keys to the old", "cabinet are on the"
    fed = httpx.post(
        f"{cluster[2].url}/sessions/{sid}/feed",
        json={"text": first, "top_k": 5},
        headers=headers,
        timeout=30,
    )
    assert fed.status_code == 200, fed.text
    cluster[2].stop(sig=9)  # the replica that served the last feed
    try:
        after = httpx.post(
            f"{balancer.url}/sessions/{sid}/feed",
            json={"text": second, "top_k": 5},
            headers=headers,
            timeout=30,
        )
        assert after.status_code == 200, after.text
        # The single-process answer: the whole text from a zero state, in one pass.
        whole = httpx.post(
            cluster[0].url + "/predict",
            json={"model": "lstm", "text": f"{first} {second}", "top_k": 5},
            timeout=30,
        ).json()
        got, want = _top(after.json()["predictions"]), _top(whole["predictions"])
        assert got.keys() == want.keys()
        assert all(abs(got[w] - want[w]) <= 1e-5 for w in want), (got, want)
    finally:
        restart(cluster, 2, stores)


@pytest.mark.skipif(not STORES, reason="needs the session_store and job_store settings")
def test_a_job_through_the_balancer_runs_once_and_every_replica_serves_it(
    cluster: list[ServerProcess], balancer: nginx_daemon.Nginx
) -> None:
    body = {"name": "balanced", "arch": "gru", "corpus": {"text": TINY_TEXT * 20}, **TINY}
    r = httpx.post(balancer.url + "/train", json=body, timeout=60)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 240
    job: dict = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{balancer.url}/jobs/{job_id}", timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    assert job.get("status") == "succeeded", job
    version = job["model"]["version"]
    assert model_store.list_versions(cluster[0].model_dir, "balanced") == [version]
    waiting = list(cluster)
    while waiting and time.monotonic() < deadline:
        waiting = [s for s in waiting if _models(s).get("balanced") != version]
        time.sleep(0.2)
    assert waiting == [], "a replica never served the job's version"
    listed = httpx.get(balancer.url + "/jobs", timeout=30).json()
    rows = listed["jobs"] if isinstance(listed, dict) else listed
    assert [j["job_id"] for j in rows if j["name"] == "balanced"] == [job_id]
