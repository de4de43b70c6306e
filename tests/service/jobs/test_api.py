"""Training jobs over HTTP against the real server: lifecycle, SSE, cancel, auth, limits.

One server for the module (starting one costs seconds), with an API key, a one-job queue,
a small corpus limit and a data directory. Every test leaves no job active behind it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from models import store
from tests.helpers import TINY_TEXT, ServerProcess

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_CORPUS = 200_000
TINY = {"hidden_size": 16, "embedding_size": 16, "batch_size": 4, "bptt": 8}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("jobs-api")
    data = root / "data"
    (data / "splitset").mkdir(parents=True)
    for split, times in (("train", 40), ("valid", 4), ("test", 4)):
        (data / "splitset" / f"{split}.txt").write_text(TINY_TEXT * times)
    (data / "notes.txt").write_text(TINY_TEXT * 10)
    (data / ".hidden.txt").write_text("not listed")
    env = {
        "GATEHOUSE_MAX_QUEUED_JOBS": "1",
        "GATEHOUSE_MAX_CORPUS_BYTES": str(MAX_CORPUS),
        "GATEHOUSE_DATA_DIR": str(data),
    }
    s = ServerProcess(root / "models", "--no-bootstrap", "--api-key", KEY, env=env)
    try:
        s.wait_ready(path="/healthz")
        yield s
    finally:
        s.stop()


def post_train(server: ServerProcess, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/train", json=body, headers=AUTH, timeout=30, **kw)


def job(server: ServerProcess, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(server: ServerProcess, job_id: str, check: Any, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = job(server, job_id)
        if check(found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got there: {found}\n{server.log()[-3000:]}")


def ended(found: dict[str, Any]) -> bool:
    return found["status"] in ("succeeded", "failed", "cancelled")


def sse_events(server: ServerProcess, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", f"{server.url}/jobs/{job_id}/events", timeout=90) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                out.append((event or "message", json.loads(line[len("data: ") :])))
    return out


def test_auth_is_required_to_train_and_cancel(server: ServerProcess) -> None:
    body = {"name": "authz", "arch": "gru", "corpus": {"text": TINY_TEXT}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{server.url}/train", json=body, headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert KEY not in r.text
        r = httpx.delete(f"{server.url}/jobs/0123456789abcdef", headers=headers, timeout=10)
        assert r.status_code == 401
    assert httpx.get(f"{server.url}/jobs", timeout=10).json()["jobs"] == []
    assert KEY not in server.log()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"hidden_size": 100_000}, ["hidden_size", "<= 1024"]),
        ({"num_layers": 0}, ["num_layers", ">= 1"]),
        ({"epochs": 10_000}, ["epochs", "<= 100"]),
        ({"bptt": 100_000}, ["bptt", "<= 512"]),
        ({"batch_size": -1}, ["batch_size", ">= 1"]),
        ({"max_vocab": 2}, ["max_vocab", ">= 3"]),
        ({"dropout": 0.95}, ["dropout", "<= 0.9"]),
        ({"lr": 0}, ["lr", "> 0"]),
        ({"hidden_size": "big"}, ["hidden_size", "integer", "<= 1024"]),
        ({"arch": "transformer"}, ["arch"]),
        ({"name": "Bad Name"}, ["name"]),
        ({"name": "../etc"}, ["name"]),
        ({"tied": True, "hidden_size": 32}, ["tied", "embedding_size == hidden_size"]),
        ({"hidden_size": 1024, "max_vocab": 100_000}, ["parameters", "50000000"]),
        ({"corpus": None}, ["corpus"]),
        ({"corpus": {}}, ["exactly one"]),
        ({"corpus": {"text": "a b", "builtin": "longrange"}}, ["exactly one"]),
        ({"corpus": {"builtin": "nope"}}, ["unknown built-in", "longrange"]),
        ({"corpus": {"dataset": "nope"}}, ["unknown dataset", "notes", "splitset"]),
        ({"corpus": {"dataset": "../../etc/passwd"}}, ["dataset"]),
        ({"corpus": {"text": "a b", "valid_fraction": 0.99}}, ["valid_fraction", "<= 0.5"]),
        ({"surprise": 1}, ["surprise"]),
    ],
)
def test_bad_requests_are_422_with_the_allowed_range(
    server: ServerProcess, change: dict[str, Any], words: list[str]
) -> None:
    body = {"name": "val", "arch": "gru", "corpus": {"text": TINY_TEXT}, **change}
    r = post_train(server, body)
    assert r.status_code == 422, r.text
    message = r.json()["message"]
    for word in words:
        assert word in message, message


def test_malformed_bodies(server: ServerProcess) -> None:
    url = f"{server.url}/train"
    r = httpx.post(url, content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = httpx.post(url, content=b"[1, 2]", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    r = httpx.post(url, content=b"x", headers={**AUTH, "content-type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(url, data={"name": "up", "arch": "gru"}, files={}, headers=AUTH)
    assert r.status_code in (415, 422)  # urlencoded form, or multipart without a file
    assert httpx.get(f"{server.url}/jobs", timeout=10).json()["jobs"] == []


def test_unknown_jobs_are_404(server: ServerProcess) -> None:
    for job_id in ("0123456789abcdef", "not-an-id", "..%2F..%2Fetc"):
        assert httpx.get(f"{server.url}/jobs/{job_id}").status_code == 404
        assert httpx.get(f"{server.url}/jobs/{job_id}/events").status_code == 404
        assert httpx.delete(f"{server.url}/jobs/{job_id}", headers=AUTH).status_code == 404
    assert httpx.get(f"{server.url}/jobs?status=bogus").status_code == 422


def test_lifecycle_with_events_then_the_model_is_served(server: ServerProcess) -> None:
    body = {"name": "life", "arch": "gru", "corpus": {"text": TINY_TEXT * 60}, "epochs": 2, **TINY}
    r = post_train(server, body)
    assert r.status_code == 202, r.text
    assert r.json() == {"job_id": r.json()["job_id"], "status": "queued"}
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    assert job(server, job_id)["status"] in ("queued", "running")

    events = sse_events(server, job_id)  # returns when the stream ends with the job
    kinds = [k for k, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end", kinds
    progress = [d for k, d in events if k == "progress"]
    assert progress and all(0 <= p["progress"] <= 1 for p in progress)
    assert {"step", "total_steps", "epoch", "loss", "tokens_per_s", "eta_s"} <= set(progress[-1])
    assert [d["epoch"] for k, d in events if k == "epoch"] == [1, 2]
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["model"] == {"name": "life", "version": 1}

    found = job(server, job_id)
    assert found["status"] == "succeeded" and found["progress"] == 1.0
    assert found["model"] == {"name": "life", "version": 1} and found["error"] is None
    assert found["metrics"]["val_ppl"] > 1 and found["attempts"] == 1
    assert [h["epoch"] for h in found["history"]] == [1, 2]
    assert {"train_loss", "val_ppl", "tokens_per_s", "seconds"} <= set(found["history"][0])
    assert found["config"]["hidden_size"] == 16 and found["request"]["epochs"] == 2
    assert found["corpus"]["kind"] == "text" and found["corpus"]["train_tokens"] > 0

    # Served at once: no wait for the store watcher.
    r = httpx.post(f"{server.url}/predict", json={"text": "the clouds are in the", "model": "life"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["arch"] == "gru"

    listed = httpx.get(f"{server.url}/jobs?status=succeeded").json()["jobs"]
    assert [j["job_id"] for j in listed] == [job_id]
    assert httpx.delete(f"{server.url}/jobs/{job_id}", headers=AUTH).status_code == 409
    assert not (server.model_dir / ".jobs" / job_id).exists()  # spool cleaned up


def test_queue_limit_cancel_and_a_dropped_stream(server: ServerProcess) -> None:
    long_job = {"arch": "lstm", "corpus": {"builtin": "longrange"}, "epochs": 5, **TINY}
    first = post_train(server, {"name": "long-a", **long_job}).json()["job_id"]
    wait_for(server, first, lambda j: j["status"] == "running" and j["progress"] > 0)
    second = post_train(server, {"name": "long-b", **long_job})
    assert second.status_code == 202
    third = post_train(server, {"name": "long-c", **long_job})
    assert third.status_code == 429, third.text
    assert int(third.headers["retry-after"]) >= 1
    assert "queue is full" in third.json()["message"]

    # A client that goes away mid-stream changes nothing for the job or the server.
    with httpx.stream("GET", f"{server.url}/jobs/{first}/events", timeout=30) as r:
        next(r.iter_lines())
    assert job(server, first)["status"] == "running"

    r = httpx.delete(f"{server.url}/jobs/{second.json()['job_id']}", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    t0 = time.monotonic()
    r = httpx.delete(f"{server.url}/jobs/{first}", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 8.0
    assert r.json()["status"] == "cancelled" and r.json()["model"] is None
    assert store.list_versions(server.model_dir, "long-a") == []
    assert store.list_versions(server.model_dir, "long-b") == []
    assert httpx.delete(f"{server.url}/jobs/{first}", headers=AUTH).status_code == 409
    assert sse_events(server, first)[-1] == ("end", job(server, first))


def test_upload_and_size_limits(server: ServerProcess) -> None:
    jobs_dir = server.model_dir / ".jobs"
    big = "word " * (MAX_CORPUS // 5 + 10)
    r = post_train(server, {"name": "big", "arch": "rnn", "corpus": {"text": big}})
    assert r.status_code == 413, r.text
    fields = {"name": "upl", "arch": "rnn", "max_steps": "20", "lowercase": "true", **TINY}
    fields = {k: str(v) for k, v in fields.items()}
    for size in (MAX_CORPUS + 1000, MAX_CORPUS * 2):  # ours, then the body guard's
        files = {"file": ("big.txt", b"w " * (size // 2), "text/plain")}
        r = httpx.post(f"{server.url}/train", data=fields, files=files, headers=AUTH, timeout=30)
        assert r.status_code == 413, r.text
    assert httpx.get(f"{server.url}/jobs", params={"status": "queued"}).json()["jobs"] == []
    assert [p.name for p in jobs_dir.iterdir() if p.is_dir()] == []  # nothing kept of refusals

    files = {"file": ("my corpus.txt", TINY_TEXT.upper().encode() * 20, "text/plain")}
    r = httpx.post(f"{server.url}/train", data=fields, files=files, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    found = wait_for(server, r.json()["job_id"], ended)
    assert found["status"] == "succeeded", found
    assert found["corpus"]["kind"] == "upload" and found["corpus"]["filename"] == "my corpus.txt"
    assert found["config"]["lowercase"] is True and found["metrics"]["steps"] == 20


def test_datasets_are_listed_and_trained_on(server: ServerProcess) -> None:
    listed = httpx.get(f"{server.url}/datasets").json()["datasets"]
    assert [(d["name"], d["kind"], d["splits"]) for d in listed] == [
        ("notes", "file", False),
        ("splitset", "dir", True),
    ]
    body = {"name": "ds", "arch": "gru", "corpus": {"dataset": "splitset"}, "max_steps": 10}
    r = post_train(server, {**body, **TINY})
    assert r.status_code == 202, r.text
    found = wait_for(server, r.json()["job_id"], ended)
    assert found["status"] == "succeeded", found
    assert found["corpus"]["kind"] == "dataset" and found["corpus"]["name"] == "splitset"
    assert found["metrics"]["test_ppl"] > 0  # the directory's own test split was used
