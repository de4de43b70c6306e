"""Admission control and departed clients: the batcher's heavy lane and freed slots, and a real
server facing non-reading `/gates` clients, `/gates` floods and clients that hang up."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from service.batcher import DynamicBatcher, QueueFull
from service.routes import gates as gates_route
from tests.helpers import ServerProcess, save_tiny_model

from .conftest import make_settings

WORDS = "the clouds are in the sky . i grew up in france .".split()


def words(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


# ---- the batcher -------------------------------------------------------------------------


async def test_a_cancelled_request_frees_its_slot_and_is_never_computed() -> None:
    seen: list[list[str]] = []
    release = threading.Event()

    def run(_: str, items: list[str]) -> list[str]:
        seen.append(items)
        if items == ["block"]:
            release.wait(10)
        return items

    batcher: DynamicBatcher[str, str, str] = DynamicBatcher(run, max_queue=2, max_batch_delay_ms=0)
    blocker = asyncio.create_task(batcher.submit("k", "block"))
    while not seen:  # the worker is busy with the blocker from here on
        await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(batcher.submit("k", f"gone{i}")) for i in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(QueueFull):
        await batcher.submit("k", "third")
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert batcher.queued == 0  # the slots are back before the worker is free
    late = asyncio.create_task(batcher.submit("k", "kept"))
    await asyncio.sleep(0.05)
    release.set()
    assert await blocker == "block" and await late == "kept"
    assert [item for batch in seen for item in batch] == ["block", "kept"]
    await batcher.close()


async def test_heavy_items_have_their_own_bound_and_a_share_of_the_worker() -> None:
    order: list[str] = []

    def run(_: str, items: list[str]) -> list[str]:
        order.extend(items)
        time.sleep(0.05 if items[0].startswith("heavy") else 0.002)
        return items

    batcher: DynamicBatcher[str, str, str] = DynamicBatcher(
        run, max_batch_size=4, max_batch_delay_ms=0, max_heavy=2, heavy_share=0.5
    )
    heavy = [asyncio.create_task(batcher.submit("k", f"heavy{i}", heavy=True)) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await batcher.submit("k", "heavy2", heavy=True)
    assert "heavy" in str(refused.value) and refused.value.retry_after_s >= 1
    light = [asyncio.create_task(batcher.submit("k", f"light{i}")) for i in range(200)]
    await asyncio.gather(*heavy, *light)
    # With a share of 0.5 the second heavy item waits until light work has had as long as the
    # first one took (50 ms, at least one batch), and then goes before the rest (100 ms).
    assert order[0] == "heavy0"
    assert order.index("light0") + 4 <= order.index("heavy1") < order.index("light199")
    await batcher.close()


async def test_rows_that_would_wait_past_max_wait_get_queue_full_at_once() -> None:
    def run(_: str, items: list[int]) -> list[int]:
        time.sleep(0.05)
        return items

    batcher: DynamicBatcher[str, int, int] = DynamicBatcher(
        run, max_batch_size=2, max_batch_delay_ms=0, max_wait_ms=100
    )
    admitted = [asyncio.create_task(batcher.submit("k", i)) for i in range(12)]
    await asyncio.sleep(0.12)  # a batch or two done: the pace is known, 6 batches still ahead
    with pytest.raises(QueueFull) as refused:
        await batcher.submit("k", 99)
    assert refused.value.retry_after_s >= 1
    assert await asyncio.gather(*admitted) == list(range(12))
    assert await batcher.submit("k", 100) == 100  # an empty queue admits again
    await batcher.close()


async def test_a_burst_after_small_batches_is_admitted() -> None:
    """Small batches (a cold start, a few clients) do not set the pace: a pass costs about the
    same at 3 rows as at 64, so a burst the worker clears in two full passes is not refused."""

    def run(_: str, items: list[int]) -> list[int]:
        time.sleep(0.05)  # the same for any batch size, as a forward pass nearly is
        return items

    batcher: DynamicBatcher[str, int, int] = DynamicBatcher(
        run, max_batch_size=64, max_batch_delay_ms=0, max_wait_ms=100
    )
    for _ in range(3):  # a few small batches, each 50 ms: 20-60 rows/s if they set the pace
        assert await asyncio.gather(*(batcher.submit("k", i) for i in range(3))) == [0, 1, 2]
    burst = await asyncio.gather(*(batcher.submit("k", i) for i in range(100)))
    assert burst == list(range(100))
    await batcher.close()


# ---- the two small items -----------------------------------------------------------------


async def test_gates_empty_units_is_422_and_the_token_413_names_its_limit(
    make_client, tiny_store: Path
) -> None:
    c = await make_client(make_settings(tiny_store, max_gate_tokens=8))
    r = await c.post("/gates", json={"model": "lstm", "text": "the sky", "units": []})
    assert r.status_code == 422 and r.json()["error"] == "unprocessable_entity"
    r = await c.post("/gates", json={"model": "lstm", "text": words(9)})
    assert r.status_code == 413 and "max_gate_tokens" in r.json()["message"], r.text
    assert "max_tokens)" not in r.json()["message"]
    r = await c.post("/predict", json={"model": "lstm", "text": "the sky"})
    assert r.status_code == 200


async def test_streamed_gates_answer_is_the_plain_json_of_the_typed_answer(
    make_client, tiny_store: Path
) -> None:
    c = await make_client(make_settings(tiny_store))
    app_engine = c._transport.app.state.engine  # type: ignore[attr-defined]
    from service.gate_answer import GateQuery

    query = GateQuery(top_k=3, units=[3, 0, 3, 7], decimals=4)
    answer = await app_engine.gates("gru", "the clouds are in the sky", query)
    streamed = b"".join(answer.chunks(chunk_values=5))  # several rows per chunk, and splits
    assert streamed == orjson.dumps(answer.to_dict())
    body = {"model": "gru", "text": "the clouds are in the sky", "units": [3, 0, 3, 7]}
    r = await c.post("/gates", json={**body, "top_k": 3, "round": 4})
    assert r.status_code == 200 and r.content == streamed
    assert answer.values.layers[0]["update"].shape == (6, 3)  # unit 3 held once


async def test_a_small_gates_answer_goes_whole_and_a_large_one_streams(
    make_client, tiny_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await make_client(make_settings(tiny_store))
    body = {"model": "lstm", "text": "the clouds are in the sky"}
    whole = await c.post("/gates", json=body)
    assert whole.status_code == 200
    assert whole.headers["content-length"] == str(len(whole.content))
    monkeypatch.setattr(gates_route, "WHOLE_BYTES", 100)
    streamed = await c.post("/gates", json=body)
    assert streamed.status_code == 200 and "content-length" not in streamed.headers
    assert streamed.content == whole.content


# ---- a real server ----------------------------------------------------------------------


def _predictions_total(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    pattern = r"^gatehouse_inference_predictions_total\{[^}]*\} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _raw_post(port: int, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    s.sendall(head.encode() + data)
    return s


def _wait_idle(url: str, timeout: float = 60) -> None:
    """Until a fresh /predict answers: every request queued before it has been dealt with."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.post(url + "/predict", json={"model": "lstm", "text": "the"}, timeout=60)
        if r.status_code == 200:
            return
        time.sleep(0.2)
    raise TimeoutError("server stayed busy")


@pytest.fixture(scope="module")
def long_gates_server(tiny_store: Path) -> Iterator[ServerProcess]:
    """A server that takes long texts on /gates: one trace keeps its inference thread busy."""
    server = ServerProcess(tiny_store, env={"GATEHOUSE_MAX_GATE_TOKENS": "100000"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_a_departed_clients_queued_request_is_never_computed(
    long_gates_server: ServerProcess,
) -> None:
    server = long_gates_server
    _wait_idle(server.url)
    before = _predictions_total(server.url)
    # A long trace keeps the inference thread busy for seconds (one counted pass).
    text = words(30000)  # seconds even on a quiet machine: the predict below queues behind it
    busy = _raw_post(server.port, "/gates", {"model": "lstm", "text": text, "summary_only": True})
    time.sleep(0.5)
    with _raw_post(server.port, "/predict", {"model": "lstm", "text": "the clouds"}):
        time.sleep(0.3)  # queued behind the trace, then the client hangs up
    busy.settimeout(120)
    assert busy.recv(12).startswith(b"HTTP/1.1 200")
    busy.close()
    _wait_idle(server.url)  # one more counted pass
    assert _predictions_total(server.url) - before == 2


def test_gates_flood_gets_503_while_predict_keeps_answering(
    long_gates_server: ServerProcess,
) -> None:
    server = long_gates_server
    _wait_idle(server.url)
    body = {"model": "lstm", "text": words(1500), "summary_only": True}
    statuses: list[tuple[int, str | None]] = []

    def flood() -> None:
        with httpx.Client(timeout=120) as c:
            for _ in range(3):
                r = c.post(server.url + "/gates", json=body)
                statuses.append((r.status_code, r.headers.get("retry-after")))

    threads = [threading.Thread(target=flood) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    latencies = []
    with httpx.Client(timeout=60) as c:
        for _ in range(5):
            t0 = time.monotonic()
            r = c.post(server.url + "/predict", json={"model": "lstm", "text": "the clouds"})
            latencies.append(time.monotonic() - t0)
            assert r.status_code == 200, r.text
    for t in threads:
        t.join()
    assert {s for s, _ in statuses} <= {200, 503}
    refused = [retry for s, retry in statuses if s == 503]
    assert refused and all(retry is not None and int(retry) >= 1 for retry in refused)
    assert max(latencies) < 5.0, latencies  # a /predict waits for one trace at most, not all


def test_non_reading_gates_clients_do_not_grow_memory(tmp_path: Path) -> None:
    store = tmp_path / "models"
    save_tiny_model(store, "wide", "lstm", hidden=128, layers=2)
    server = ServerProcess(store, env={"GATEHOUSE_DEFAULT_MODEL": "wide"})
    try:
        server.wait_ready()
        # The largest answer max_gate_values allows: 512 tokens x 6 gates x 2 layers x 325
        # units (a unit list repeated) = 1,996,800 values, ~38 MB of JSON.
        units = list(range(128)) * 2 + list(range(69))
        body = {"model": "wide", "text": words(512), "units": units}
        warm = httpx.post(server.url + "/gates", json=body, timeout=120)
        assert warm.status_code == 200 and len(warm.content) > 30_000_000
        rss_before = _rss_mb(server.proc.pid)
        stalled = []
        for _ in range(20):
            s = _raw_post(server.port, "/gates", body)
            s.settimeout(120)
            assert s.recv(12).startswith(b"HTTP/1.1 200")
            stalled.append(s)  # never read again
        time.sleep(1.0)
        growth = _rss_mb(server.proc.pid) - rss_before
        # Holding each answer as text would be 20 x 38 MB; held as float32 values it is
        # 20 x 3.1 MB plus a chunk of text each.
        assert growth < 150, f"RSS grew {growth:.0f} MB for 20 stalled clients"
        r = httpx.post(server.url + "/predict", json={"model": "wide", "text": "the"}, timeout=30)
        assert r.status_code == 200
        for s in stalled:
            s.close()
    finally:
        server.stop()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")
