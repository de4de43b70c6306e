"""End to end against the real `python -m service` process on a free loopback port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from models.builtin import COUNTRIES, FILLERS, long_range_prefix
from tests.helpers import REPO, ServerProcess

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory):
    """A server started on an empty store: it trains the three defaults, then serves."""
    server = ServerProcess(tmp_path_factory.mktemp("boot") / "models", "--torch-threads", "2")
    try:
        server.wait_ready(timeout=30, path="/healthz")
        server.first_readyz = httpx.get(server.url + "/readyz").status_code  # type: ignore[attr-defined]
        server.wait_ready(timeout=600)
        deadline = time.monotonic() + 120  # readiness needs one model; the tests need all three
        while time.monotonic() < deadline:
            names = {m["name"] for m in httpx.get(server.url + "/models").json()["models"]}
            if names == {"rnn", "lstm", "gru"}:
                break
            time.sleep(0.5)
        yield server
    finally:
        server.stop()


def test_bootstrap_trains_the_defaults(bootstrapped: ServerProcess) -> None:
    assert bootstrapped.first_readyz == 503  # type: ignore[attr-defined]
    models = httpx.get(bootstrapped.url + "/models").json()["models"]
    assert {m["name"]: m["arch"] for m in models} == {"rnn": "rnn", "lstm": "lstm", "gru": "gru"}
    for m in models:
        assert m["metrics"]["val_ppl"] > 1
    assert "bootstrap" in bootstrapped.log()


@pytest.mark.parametrize("model", ["lstm", "gru"])
def test_long_range_language_comes_first(bootstrapped: ServerProcess, model: str) -> None:
    """ "i grew up in france . <1-4 fillers> i speak fluent" -> "french", every country."""
    texts, expected = [], []
    for i, (country, language) in enumerate(COUNTRIES):
        for n in range(1, 5):
            fillers = [FILLERS[(i * 3 + n * 5 + k) % len(FILLERS)] for k in range(n)]
            texts.append(long_range_prefix(country, fillers))
            expected.append(language)
    texts.append("i grew up in france . the clouds are in the sky . i speak fluent")
    expected.append("french")
    misses = []
    for start in range(0, len(texts), 32):
        r = httpx.post(
            bootstrapped.url + "/predict",
            json={"model": model, "texts": texts[start : start + 32], "top_k": 3},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        chunk = slice(start, start + 32)
        for text, want, res in zip(texts[chunk], expected[chunk], r.json()["results"], strict=True):
            if res["predictions"][0]["word"] != want:
                misses.append((text, want, res["predictions"]))
    assert not misses, misses[:3]


def test_new_version_from_the_cli_is_picked_up(bootstrapped: ServerProcess) -> None:
    cmd = [sys.executable, "-m", "models.train", "--arch", "gru", "--builtin"]
    cmd += ["--model-dir", str(bootstrapped.model_dir), "--name", "cli-gru", "--max-steps", "2"]
    cmd += ["--hidden-size", "16", "--embedding-size", "16", "--seed", "1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.post(bootstrapped.url + "/predict", json={"model": "cli-gru", "text": "the sky"})
        if r.status_code == 200:
            break
        time.sleep(0.3)
    assert r.status_code == 200 and r.json()["version"] == 1


def test_real_http_errors_and_sigterm(tiny_store, tmp_path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    server = ServerProcess(model_dir, "--no-bootstrap")
    try:
        server.wait_ready()
        url = server.url
        assert httpx.post(url + "/predict", json={"model": "nope", "text": "a"}).status_code == 404
        assert httpx.post(url + "/predict", json={"text": ""}).status_code == 422
        r = httpx.post(url + "/predict", content=b"{", headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and r.json()["message"]
        r = httpx.get(url + "/gates", params={"model": "gru", "text": "the sky", "units": "0-3"})
        assert r.status_code == 200 and len(r.json()["layers"][0]["gates"]["update"][0]) == 4
        assert httpx.get(url + "/openapi.json").json()["paths"]["/predict"]
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.log()


def test_refuses_open_non_loopback_without_key(tmp_path) -> None:
    cmd = [sys.executable, "-m", "service", "--host", "0.0.0.0", "--model-dir", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "without an API key" in done.stderr + done.stdout
