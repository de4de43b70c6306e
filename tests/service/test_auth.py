"""The API key and what it guards: a real server with `--api-key --protect-inference`, the
start-up refusals of real `python -m service` processes, and the settings behind them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.auth import api_key
from service.exposure import check_exposure
from service.settings import Settings
from tests.helpers import REPO, ServerProcess, free_port
from tests.service.conftest import make_settings

KEY = "flag-given-key-91c2"
AUTH = {"authorization": f"Bearer {KEY}"}

CLOSED = [
    ("GET", "/models", None),
    ("GET", "/models/lstm", None),
    ("GET", "/jobs", None),
    ("GET", "/jobs/0123456789abcdef", None),
    ("GET", "/datasets", None),
    ("GET", "/metrics", None),
    ("POST", "/predict", {"text": "the sky"}),
    ("POST", "/score", {"text": "the sky"}),
    ("POST", "/generate", {"text": "the sky", "max_words": 1}),
    ("POST", "/gates", {"text": "the sky"}),
    ("GET", "/gates?text=the+sky", None),
    ("POST", "/sessions", {"model": "lstm"}),
    ("GET", "/v1/models", None),
    ("GET", "/v2/models/lstm", None),
    (
        "POST",
        "/v2/models/lstm/infer",
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the"]}]},
    ),
    ("POST", "/v1/completions", {"model": "lstm", "prompt": "the", "max_tokens": 1}),
    ("POST", "/train", {"name": "x", "arch": "gru", "corpus": {"builtin": "longrange"}}),
]


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model_dir = tmp_path_factory.mktemp("auth") / "models"
    shutil.copytree(tiny_store, model_dir)
    broken = model_dir / "lstm" / "2"  # a version whose files are not a model
    broken.mkdir()
    (broken / "meta.json").write_text("{ not json")
    s = ServerProcess(model_dir, "--no-bootstrap", "--api-key", KEY, "--protect-inference")
    try:
        s.wait_ready(timeout=120)
        yield s
    finally:
        s.stop()


@pytest.mark.parametrize(("method", "path", "body"), CLOSED, ids=lambda v: str(v)[:30])
def test_protect_inference_closes_every_route_that_tells_anything(
    server: ServerProcess, method: str, path: str, body: dict | None
) -> None:
    for headers in ({}, {"authorization": "Bearer"}, {"authorization": "Bearer wrong"}):
        r = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == 401, (path, headers, r.text)
    if path != "/train":  # no real training job
        r = httpx.request(method, server.url + path, json=body, headers=AUTH, timeout=30)
        assert r.status_code < 400 or (path.startswith("/jobs/") and r.status_code == 404), r.text


def test_probes_the_page_and_the_docs_stay_open(server: ServerProcess) -> None:
    for path in ("/healthz", "/readyz", "/", "/openapi.json"):
        assert httpx.get(server.url + path, timeout=30).status_code == 200, path


def test_the_key_given_as_a_flag_is_masked_in_the_process_title(server: ServerProcess) -> None:
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline")
    if not cmdline.exists():
        pytest.skip("no /proc on this system")
    shown = cmdline.read_text(errors="replace")
    assert KEY not in shown and "--api-key" in shown and "***" in shown
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(server.proc.pid)], capture_output=True)
    assert KEY.encode() not in ps.stdout


def test_error_messages_name_no_host_path(server: ServerProcess) -> None:
    root = str(server.model_dir)
    r = httpx.post(server.url + "/predict", json={"model": "lstm@2", "text": "the"}, headers=AUTH)
    assert r.status_code >= 400 and "lstm v2" in r.json()["message"], r.text
    assert root not in r.text
    versions = httpx.get(server.url + "/models/lstm", headers=AUTH).json()["versions"]
    errors = [v["error"] for v in versions if v.get("error")]
    assert errors and not any(root in e for e in errors)
    assert root in server.log()  # the operator still sees where


async def test_metrics_open_keeps_metrics_for_a_scraper(make_client, tiny_store: Path) -> None:
    settings = make_settings(tiny_store, api_key=KEY, protect_inference=True, metrics_open=True)
    client = await make_client(settings)
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/models")).status_code == 401


def test_an_empty_key_is_no_key() -> None:
    for blank in ("", "   "):
        settings = Settings(api_key=blank, host="0.0.0.0")
        assert settings.api_key is None and api_key(settings) is None
        assert "refusing" in (check_exposure(settings) or "")
    assert check_exposure(Settings(api_key="k", host="0.0.0.0")) is None
    assert check_exposure(Settings(host="127.0.0.1")) is None
    assert check_exposure(Settings(host="0.0.0.0", allow_open=True)) is None


def test_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("  from-a-file \n# comment\n")
    settings = Settings(api_key_file=key_file, host="0.0.0.0")
    assert api_key(settings) == b"from-a-file" and check_exposure(settings) is None
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert "empty" in (check_exposure(Settings(api_key_file=empty)) or "")
    assert "cannot read" in (check_exposure(Settings(api_key_file=tmp_path / "nope")) or "")


def test_an_empty_key_from_the_environment_is_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_API_KEY", "")
    monkeypatch.setenv("GATEHOUSE_HOST", "0.0.0.0")
    settings = Settings()
    assert settings.api_key is None and "refusing" in (check_exposure(settings) or "")


def test_an_empty_key_flag_does_not_open_a_reachable_address(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "service", "--host", "0.0.0.0", "--port", str(free_port())]
    cmd += ["--model-dir", str(tmp_path / "models"), "--no-bootstrap", "--api-key", ""]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to listen on 0.0.0.0" in done.stdout + done.stderr
