"""Structured logs: the JSON line format, the request-id middleware, and what must never appear."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from service import logs, metrics
from tests.helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-key-do-not-log"


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """Captures the access logger through the real JSON formatter."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logs.JsonFormatter())
    lg = logging.getLogger(logs.ACCESS_LOGGER)
    old_level = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    try:
        yield buf
    finally:
        lg.removeHandler(handler)
        lg.setLevel(old_level)


def parsed(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: dict) -> dict:
        logs.set_request_model(body.get("model", "lstm"))
        return {"ok": True}

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict:
        # A sync route runs in a worker thread with a copied context: the model must still
        # reach the access line.
        logs.set_request_model("gru")
        return {"job_id": job_id}

    metrics.install(app)
    logs.install(app)
    logs.install(app)  # idempotent
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_one_json_line_per_request_with_the_fields(access_lines: io.StringIO) -> None:
    async with client(make_app()) as c:
        r = await c.post(
            "/predict?text=private+words",
            json={"model": "lstm", "text": "my private sentence"},
            headers={"X-Request-ID": "abc-123.X_y:z", "Authorization": f"Bearer {SECRET}"},
        )
        r2 = await c.get("/jobs/j42")
    assert r.status_code == 200 and r2.status_code == 200
    assert r.headers["x-request-id"] == "abc-123.X_y:z"
    lines = parsed(access_lines)
    assert len(lines) == 2
    first, second = lines
    assert set(first) >= {"time", "level", "logger", "message", "method", "path", "status"}
    assert first["method"] == "POST" and first["path"] == "/predict" and first["status"] == 200
    assert first["route"] == "/predict" and first["model"] == "lstm"
    assert first["request_id"] == "abc-123.X_y:z"
    assert first["logger"] == logs.ACCESS_LOGGER and first["level"] == "info"
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert first["time"].endswith("+00:00")
    assert second["route"] == "/jobs/{job_id}" and second["path"] == "/jobs/j42"
    assert second["model"] == "gru"
    assert second["request_id"] == r2.headers["x-request-id"]
    raw = access_lines.getvalue()
    for private in (SECRET, "Bearer", "private", "sentence"):
        assert private not in raw


@pytest.mark.parametrize(
    "incoming",
    ["x" * 129, "has space", "semi;colon", "ünïcode", "new\nline", ""],
)
async def test_bad_request_ids_are_replaced(access_lines: io.StringIO, incoming: str) -> None:
    async with client(make_app()) as c:
        r = await c.get("/jobs/1", headers=[(b"x-request-id", incoming.encode("utf-8"))])
    rid = r.headers["x-request-id"]
    assert rid != incoming and len(rid) == 32 and int(rid, 16) >= 0
    assert len(r.headers.get_list("x-request-id")) == 1
    assert parsed(access_lines)[0]["request_id"] == rid


async def test_generated_ids_are_unique(access_lines: io.StringIO) -> None:
    async with client(make_app()) as c:
        ids = {(await c.get("/jobs/1")).headers["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


async def test_unmatched_and_error_paths_are_logged(access_lines: io.StringIO) -> None:
    async with client(make_app()) as c:
        assert (await c.get("/no/such/thing")).status_code == 404
    line = parsed(access_lines)[0]
    assert line["status"] == 404 and line["route"] == "unmatched" and line["model"] is None


def test_formatter_redacts_secret_looking_extras() -> None:
    record = logging.LogRecord(
        "gatehouse.jobs", logging.WARNING, __file__, 1, "job %s", ("j1",), None
    )
    record.job_id = "j1"
    record.api_key = SECRET
    record.authorization = f"Bearer {SECRET}"
    out = json.loads(logs.JsonFormatter().format(record))
    assert out["message"] == "job j1" and out["level"] == "warning" and out["job_id"] == "j1"
    assert out["api_key"] == "[redacted]" and out["authorization"] == "[redacted]"


def test_configure_logging_writes_json_to_stderr() -> None:
    code = (
        "import logging; from service.logs import configure_logging\n"
        "configure_logging('info')\n"
        "logging.getLogger('gatehouse.jobs').info('job started', extra={'job_id': 'j9'})\n"
        "logging.getLogger('uvicorn.error').warning('uvicorn says')\n"
        "logging.getLogger('x').debug('hidden at info')\n"
        "try:\n    1/0\nexcept ZeroDivisionError:\n    logging.getLogger('x').exception('failed')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [entry["message"] for entry in lines] == ["job started", "uvicorn says", "failed"]
    assert lines[0]["job_id"] == "j9" and lines[0]["logger"] == "gatehouse.jobs"
    assert lines[1]["level"] == "warning"
    assert "ZeroDivisionError" in lines[2]["exc_info"]


def test_real_server_logs_only_json_lines_and_never_secrets(tiny_store: Path) -> None:
    server = ServerProcess(tiny_store, "--no-bootstrap", "--api-key", SECRET)
    rid = f"e2e-{uuid.uuid4().hex}"
    try:
        server.wait_ready(60)
        with httpx.Client(base_url=server.url, timeout=10) as c:
            r = c.post(
                "/predict",
                json={"text": "the clouds are in the", "model": "gru"},
                headers={"X-Request-ID": rid, "Authorization": f"Bearer {SECRET}"},
            )
            assert r.status_code == 200 and r.headers["x-request-id"] == rid
            # A wrong key is refused; neither key may reach the log.
            denied = c.delete("/jobs/nope", headers={"Authorization": "Bearer wrong-key-xyz"})
            assert denied.status_code in (401, 404)
    finally:
        assert server.stop() == 0
    text = server.log()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in lines)
    (access,) = [
        e for e in lines if e.get("request_id") == rid and e["logger"] == logs.ACCESS_LOGGER
    ]
    assert access["method"] == "POST" and access["path"] == "/predict" and access["status"] == 200
    assert access["model"] == "gru" and access["duration_ms"] > 0
    for private in (SECRET, "wrong-key-xyz", "clouds"):
        assert private not in text
