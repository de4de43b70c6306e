"""What the client protocols cost over `/predict`, and `/score` against one `/predict` batch.

`/v1/completions` (one greedy word with logprobs 5) and `/v2/models/lstm/infer` (JSON, top_k 5)
ask the same model the same question as `/predict` (top_k 5); `hey` windows at concurrency 64
alternate between the three routes, so all meet the same machine, and each route's req/s is
the median of its windows. Targets: both >= 0.9x `/predict`. Then `/score` on 64 texts of 35
words against `/predict` on the same 64 texts (median of 21 sequential requests each): one
batched pass over every position should cost <= 1.5x the last-position pass.

`--cpu` measures instead what each route costs the event loop, without the network: the app
runs in this process, 64 concurrent callers send it raw ASGI requests, and each route's
figure is the event-loop thread's CPU time per request (median of alternating batches). The
server's throughput at c=64 is bound by that thread, so these ratios are the ones the req/s
ratios follow, with far less noise on a shared machine.

    python -m bench.protocols [--rounds 3 --seconds 5]
    python -m bench.protocols --cpu [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from . import hey
from .echo import NAME, TEXT, build_tiny
from .server import Server

WORDS = (
    "the clouds are in the sky . i grew up in france . i speak fluent french . "
    "the keys to the old cabinet are on the table . the sky is blue"
).split()


def bodies() -> dict[str, tuple[str, str]]:
    """route name -> (path, JSON body), the same question in each protocol."""
    v2_input = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}
    return {
        "/predict": ("/predict", json.dumps({"model": NAME, "text": TEXT, "top_k": 5})),
        "/v1/completions": (
            "/v1/completions",
            json.dumps(
                {"model": NAME, "prompt": TEXT, "max_tokens": 1, "temperature": 0, "logprobs": 5}
            ),
        ),
        "/v2 infer": (
            f"/v2/models/{NAME}/infer",
            json.dumps({"inputs": [v2_input], "parameters": {"top_k": 5}}),
        ),
    }


def _median_latency(client: httpx.Client, url: str, body: dict, n: int = 21) -> float:
    client.post(url, json=body).raise_for_status()  # warm
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.post(url, json=body).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def _asgi_post(app: Any, path: str, body: bytes) -> None:
    """One request straight into the ASGI app; the answer must be a 200."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the client stays
        raise AssertionError("unreachable")

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("bench", 80),
    }
    await app(scope, receive, send)
    if statuses != [200]:
        raise RuntimeError(f"{path}: status {statuses}")


async def _cpu_per_request(app: Any, path: str, body: bytes, n: int, concurrency: int) -> float:
    """Event-loop thread CPU seconds per request, `n` requests from `concurrency` callers."""

    async def caller() -> None:
        for _ in range(n // concurrency):
            await _asgi_post(app, path, body)

    start = time.thread_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return (time.thread_time() - start) / (n // concurrency * concurrency)


async def _cpu(rounds: int, concurrency: int, n: int) -> dict[str, list[float]]:
    from service.app import create_app  # here: the network bench needs none of the app
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="gatehouse-protocols-") as tmp:
        model_dir = Path(tmp) / "models"
        build_tiny(model_dir)
        app = create_app(Settings(model_dir=model_dir, no_bootstrap=True, default_model=NAME))
        routes = [(name, path, body.encode()) for name, (path, body) in bodies().items()]
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in routes}
        async with app.router.lifespan_context(app):
            for _, path, body in routes:  # warm
                await _cpu_per_request(app, path, body, concurrency * 10, concurrency)
            for r in range(rounds):
                for name, path, body in routes if r % 2 == 0 else reversed(routes):
                    cpu[name].append(await _cpu_per_request(app, path, body, n, concurrency))
    return cpu


def cpu_main(rounds: int, concurrency: int) -> int:
    # The access log stays on (it is part of every request's cost) but goes to /dev/null,
    # as a server's goes to a file, not to a terminal.
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            cpu = asyncio.run(_cpu(rounds, concurrency, concurrency * 50))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    base = statistics.median(cpu["/predict"])
    print(f"| in-process, c={concurrency}, {rounds} rounds | event-loop CPU us/req | ratio |")
    print("|---|---:|---:|")
    for name, values in cpu.items():
        med = statistics.median(values)
        print(f"| {name} | {med * 1e6:,.0f} | {med / base:.2f}x |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--cpu", action="store_true", help="event-loop CPU per request, in process")
    args = p.parse_args(argv)
    if args.cpu:
        return cpu_main(args.rounds, args.concurrency)
    hey.require_hey()
    with tempfile.TemporaryDirectory(prefix="gatehouse-protocols-") as tmp:
        model_dir = Path(tmp) / "models"
        build_tiny(model_dir)
        with Server(model_dir, NAME, Path(tmp) / "server.log", {}) as srv:
            routes = list(bodies().items())
            rps: dict[str, list[float]] = {name: [] for name, _ in routes}
            failed = 0
            for r in range(args.rounds):
                for name, (path, body) in routes if r % 2 == 0 else reversed(routes):
                    res = hey.run(srv.url + path, body, args.concurrency, args.seconds, 1.0)
                    rps[name].append(res.rps)
                    failed += res.failed
            text35 = " ".join((WORDS * 2)[:35])
            batch = {"model": NAME, "texts": [text35] * 64}
            with httpx.Client(timeout=60) as client:
                score = _median_latency(client, srv.url + "/score", batch)
                predict = _median_latency(client, srv.url + "/predict", batch)
    base = statistics.median(rps["/predict"])
    print(f"| c={args.concurrency}, {args.rounds} x {args.seconds:g} s | req/s (median) | ratio |")
    print("|---|---:|---:|")
    for name, values in rps.items():
        med = statistics.median(values)
        target = "" if name == "/predict" else " (target >= 0.9)"
        print(f"| {name} | {med:,.0f} | {med / base:.2f}x{target} |")
    print(f"\nfailed requests: {failed}")
    print(
        f"/score 64 x 35 words: {score * 1000:.1f} ms; /predict on the same batch: "
        f"{predict * 1000:.1f} ms; ratio {score / predict:.2f}x (target <= 1.5)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
