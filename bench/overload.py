"""Overload: `/predict` next to heavy `/gates` clients, and `/gates` clients that never read.

The model has the embedded default LSTM's shape and vocabulary (random weights: speed only).
A max-size `/gates` request is 512 tokens with a unit list repeated up to `max_gate_values`
(1,996,800 values, ~40 MB of JSON), as in issue 15.

1. undisturbed: `--predict-clients` closed-loop `/predict` clients, each with a `--timeout`
   (the client hangs up and sends the next one); capacity = 200s within the time-out per s.
2. mixed: the same, plus `--gates-clients` closed-loop max-size `/gates` clients reading their
   answers (a 503 waits its Retry-After, as a client library does). Targets: 200s within the
   time-out >= 0.8x undisturbed capacity; the rest fast 503s with Retry-After; p99 of the 200s
   <= 3x undisturbed.
3. stalled: `--stalled` max-size `/gates` clients that send and never read; target: the
   server's RSS grows <= 300 MB.

    python -m bench.overload [--seconds 10 --predict-clients 256 --gates-clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .echo import NAME, build_tiny
from .server import Server

WORDS = "the clouds are in the sky . i grew up in france . i speak fluent french .".split()


def gates_body(hidden: int, layers: int, max_values: int = 2_000_000) -> dict[str, object]:
    tokens = 512
    width = max_values // (tokens * 6 * layers)  # LSTM: six gate keys per layer
    units = [i % hidden for i in range(width)]
    text = " ".join(WORDS[i % len(WORDS)] for i in range(tokens))
    return {"model": NAME, "text": text, "units": units}


@dataclass
class Tally:
    ok: list[float] = field(default_factory=list)  # latency of each 200 within the time-out
    busy: list[float] = field(default_factory=list)  # latency of each 503
    busy_without_retry_after: int = 0
    timeouts: int = 0
    other: int = 0


async def predict_client(
    session: aiohttp.ClientSession, url: str, until: float, timeout: float, tally: Tally
) -> None:
    body = json.dumps({"model": NAME, "text": "i grew up in france . i speak fluent"})
    headers = {"content-type": "application/json"}
    limit = aiohttp.ClientTimeout(total=timeout)
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers, timeout=limit) as r:
                await r.read()
                dt = time.perf_counter() - t0
                if r.status == 200:
                    tally.ok.append(dt)
                elif r.status == 503:
                    tally.busy.append(dt)
                    tally.busy_without_retry_after += "Retry-After" not in r.headers
                else:
                    tally.other += 1
        except TimeoutError:
            tally.timeouts += 1
        except aiohttp.ClientError:
            tally.other += 1


async def gates_client(
    session: aiohttp.ClientSession, url: str, body: dict, until: float, counts: dict[int, int]
) -> None:
    while time.monotonic() < until:
        try:
            async with session.post(url, json=body) as r:
                await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1
                if r.status == 503:
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
        except aiohttp.ClientError:
            counts[0] = counts.get(0, 0) + 1


async def load(url: str, args: argparse.Namespace, gates: dict | None) -> tuple[Tally, dict]:
    tally, gate_counts = Tally(), {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        until = time.monotonic() + args.seconds
        tasks = [
            predict_client(session, url + "/predict", until, args.timeout, tally)
            for _ in range(args.predict_clients)
        ]
        if gates is not None:
            tasks += [
                gates_client(session, url + "/gates", gates, until, gate_counts)
                for _ in range(args.gates_clients)
            ]
        await asyncio.gather(*tasks)
    return tally, gate_counts


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else float("nan")


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def stalled(port: int, pid: int, body: dict, n: int) -> tuple[float, float, dict[str, int]]:
    """RSS before and after `n` max-size /gates clients that never read past the status."""
    data = json.dumps(body).encode()
    head = (
        f"POST /gates HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    before = rss_mb(pid)
    held: list[socket.socket] = []
    statuses: dict[str, int] = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        s.sendall(head + data)
        status = s.recv(12)[9:12].decode() or "closed"
        statuses[status] = statuses.get(status, 0) + 1
        held.append(s)
    time.sleep(2.0)
    after = rss_mb(pid)
    for s in held:
        s.close()
    return before, after, statuses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--predict-clients", type=int, default=256)
    p.add_argument("--gates-clients", type=int, default=8)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--stalled", type=int, default=50)
    args = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="gatehouse-overload-") as tmp:
        model_dir = Path(tmp) / "models"
        cfg = build_tiny(model_dir)
        body = gates_body(cfg.hidden_size, cfg.num_layers)
        with Server(model_dir, NAME, Path(tmp) / "server.log", {}) as srv:
            asyncio.run(load(srv.url, argparse.Namespace(**{**vars(args), "seconds": 2}), None))
            alone, _ = asyncio.run(load(srv.url, args, None))
            mixed, gate_counts = asyncio.run(load(srv.url, args, body))
            before, after, statuses = stalled(srv.port, srv.proc.pid, body, args.stalled)
        print(f"load average at end: {os.getloadavg()}")
    cap, got = max(len(alone.ok), 1) / args.seconds, len(mixed.ok) / args.seconds
    print(f"\n| phase | 200s in {args.timeout:g} s /s | p50 ms | p99 ms | 503s | time-outs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in (("undisturbed", alone), ("mixed", mixed)):
        print(
            f"| {name} | {len(t.ok) / args.seconds:,.0f} | {p50(t.ok) * 1000:.1f} "
            f"| {p99(t.ok) * 1000:.1f} | {len(t.busy)} | {t.timeouts} |"
        )
    busy_p99 = p99(mixed.busy) * 1000
    print(f"\nmixed / undisturbed capacity: {got / cap:.2f}x (target >= 0.8)")
    print(f"mixed p99 / undisturbed p99: {p99(mixed.ok) / p99(alone.ok):.2f}x (target <= 3)")
    print(
        f"mixed 503s: {len(mixed.busy)}, p99 {busy_p99:.1f} ms, "
        f"{mixed.busy_without_retry_after} without Retry-After; other errors {mixed.other}"
    )
    print(f"/gates answers in the mixed phase by status: {gate_counts}")
    print(
        f"\n{args.stalled} stalled max-size /gates clients: RSS {before:.0f} -> {after:.0f} MB, "
        f"growth {after - before:.0f} MB (target <= 300); statuses {statuses}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
