"""SIGTERM: stop accepting, finish what is in flight, exit 0 within a bounded time."""

from __future__ import annotations

import shutil
import signal
import threading
import time

import httpx

from tests.helpers import ServerProcess


def wait_in_flight(url: str, count: int, timeout: float = 30.0) -> None:
    """Until `count` requests besides the scrape itself are in flight: a fixed sleep is too
    short on a loaded machine, and a SIGTERM before they connect tests nothing."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url + "/metrics", timeout=10).text
        line = next(
            x for x in text.splitlines() if x.startswith("gatehouse_http_requests_in_flight")
        )
        if float(line.split()[-1]) - 1 >= count:
            return
        assert time.monotonic() < deadline, f"only {line} after {timeout} s"
        time.sleep(0.05)


def test_sigterm_finishes_in_flight_requests(tiny_store, tmp_path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    server = ServerProcess(model_dir, "--no-bootstrap", "--max-words", "1500")
    server.wait_ready()
    results: list[int | str] = []

    def long_request() -> None:
        body = {"model": "lstm", "text": "the clouds", "max_words": 1500, "temperature": 1.0}
        try:
            results.append(httpx.post(server.url + "/generate", json=body, timeout=60).status_code)
        except httpx.HTTPError as e:
            results.append(repr(e))

    threads = [threading.Thread(target=long_request) for _ in range(8)]
    for t in threads:
        t.start()
    wait_in_flight(server.url, 8)  # every request accepted and generating
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=60)
    for t in threads:
        t.join(60)
    assert code == 0, server.log()[-3000:]
    assert results == [200] * 8, results
    assert time.monotonic() - started < 45
    assert "Application shutdown complete" in server.log()
