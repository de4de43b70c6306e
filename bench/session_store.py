"""What keeping sessions in Redis costs a feed: the same server, in-memory vs Redis-backed.

Two real servers on one model store (an LSTM of the given size, random weights) run side by
side, one with `--session-store memory`, one with `--session-store redis://...` (a real
redis-server this benchmark starts, no persistence). Windows alternate between them, so both
meet the same machine:

- c=1: one session fed one word at a time, `--feeds` feeds per window: the latency of a feed;
- c=N: N sessions, each fed one word at a time by its own client in a loop for `--seconds`:
  req/s and p99 (feeds of different sessions batch together in the engine).

Each figure is the median over `--rounds` windows. Target: a Redis-backed feed costs at most
1.3x the in-memory one (c=1 p50 latency ratio, and the c=N req/s ratio inverted).

    python -m bench.session_store [--rounds 5 --seconds 5 --concurrency 32 --hidden 650 --layers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from models import store
from models.corpus import corpus_from_builtin
from models.lm import RNNLM, ModelConfig

from .machine import cpu_name
from .server import Server, free_port

NAME = "lstm"
WORDS = "the clouds are in the sky . i grew up in france . i speak fluent french .".split()


@dataclass
class Backend:
    name: str
    server: Server
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (id, token)
    c1_p50: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    failed: int = 0


def build_model(model_dir: Path, hidden: int, layers: int) -> ModelConfig:
    tokenizer = corpus_from_builtin("longrange", 0, lowercase=True).tokenizer
    cfg = ModelConfig("lstm", len(tokenizer.vocab), min(hidden, 650), hidden, layers)
    torch.manual_seed(0)
    store.save_version(model_dir, NAME, RNNLM(cfg).eval(), tokenizer, {"bench": "sessions"})
    return cfg


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    args += ["no", "--dir", str(folder)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("redis-server did not open its port")


async def _open(client: httpx.AsyncClient, n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        r = await client.post("/sessions", json={"model": NAME})
        r.raise_for_status()
        out.append((r.json()["session_id"], r.json()["session_token"]))
    return out


async def _feed(client: httpx.AsyncClient, sid: str, token: str, word: str) -> bool:
    r = await client.post(
        f"/sessions/{sid}/feed",
        json={"text": word, "top_k": 5},
        headers={"x-session-token": token},
    )
    return r.status_code == 200


async def _c1(b: Backend, feeds: int, rng: random.Random) -> None:
    sid, token = b.sessions[0]
    times = []
    async with httpx.AsyncClient(base_url=b.server.url, timeout=60) as client:
        for _ in range(feeds):
            start = time.perf_counter()
            ok = await _feed(client, sid, token, rng.choice(WORDS))
            times.append(time.perf_counter() - start)
            b.failed += not ok
    b.c1_p50.append(statistics.median(times))


async def _cn(b: Backend, seconds: float, rng: random.Random) -> None:
    workers = b.sessions[1:]
    limits = httpx.Limits(max_connections=len(workers), max_keepalive_connections=len(workers))
    times: list[float] = []
    async with httpx.AsyncClient(base_url=b.server.url, timeout=60, limits=limits) as client:
        stop = time.perf_counter() + seconds

        async def worker(sid: str, token: str) -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                ok = await _feed(client, sid, token, rng.choice(WORDS))
                times.append(time.perf_counter() - start)
                b.failed += not ok

        began = time.perf_counter()
        await asyncio.gather(*(worker(s, t) for s, t in workers))
        elapsed = time.perf_counter() - began
    times.sort()
    b.rps.append(len(times) / elapsed)
    b.p99.append(times[int(0.99 * (len(times) - 1))])


async def _run(backends: list[Backend], args: argparse.Namespace) -> None:
    rng = random.Random(0)
    for b in backends:
        async with httpx.AsyncClient(base_url=b.server.url, timeout=60) as client:
            b.sessions = await _open(client, args.concurrency + 1)
            for sid, token in b.sessions:  # warm: every session has a state from here on
                await _feed(client, sid, token, "the")
    for r in range(args.rounds):
        for b in backends if r % 2 == 0 else reversed(backends):
            await _c1(b, args.feeds, rng)
        for b in backends if r % 2 == 0 else reversed(backends):
            await _cn(b, args.seconds, rng)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session_store", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each c=N window")
    p.add_argument("--feeds", type=int, default=200, help="feeds in each c=1 window")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--hidden", type=int, default=650)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gatehouse-session-store-") as tmp:
        folder = Path(tmp)
        cfg = build_model(folder / "models", args.hidden, args.layers)
        redis_proc, url = start_redis(folder)
        env = {"GATEHOUSE_SESSION_CREATE_RATE": "0", "GATEHOUSE_TORCH_THREADS": "1"}
        try:
            with (
                Server(folder / "models", NAME, folder / "memory.log", env) as memory,
                Server(
                    folder / "models",
                    NAME,
                    folder / "redis.log",
                    {**env, "GATEHOUSE_SESSION_STORE": url},
                ) as shared,
            ):
                backends = [Backend("memory", memory), Backend("redis", shared)]
                asyncio.run(_run(backends, args))
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)
    load_after = os.getloadavg()
    mem, red = backends
    state_kb = 2 * cfg.num_layers * cfg.hidden_size * 4 / 1024
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print(
        f"load average (1, 5, 15 min): before {', '.join(f'{x:.1f}' for x in load_before)}; "
        f"after {', '.join(f'{x:.1f}' for x in load_after)}"
    )
    print(
        f"model: lstm {cfg.num_layers}x{cfg.hidden_size}, vocab {cfg.vocab_size} "
        f"(state {state_kb:.1f} KB); {args.rounds} rounds, c=1 {args.feeds} feeds, "
        f"c={args.concurrency} {args.seconds:g} s per window\n"
    )
    print("| store | c=1 p50 ms | c=N req/s | c=N p99 ms |")
    print("|---|---:|---:|---:|")
    for b in backends:
        print(
            f"| {b.name} | {statistics.median(b.c1_p50) * 1e3:.2f} | "
            f"{statistics.median(b.rps):,.0f} | {statistics.median(b.p99) * 1e3:.1f} |"
        )
    lat = statistics.median(red.c1_p50) / statistics.median(mem.c1_p50)
    thr = statistics.median(mem.rps) / statistics.median(red.rps)
    per_round = [r / m for r, m in zip(red.c1_p50, mem.c1_p50, strict=True)]
    print(f"\nredis / memory, c=1 feed latency: {lat:.2f}x (target <= 1.3)")
    print(f"memory / redis, c={args.concurrency} req/s: {thr:.2f}x (target <= 1.3)")
    print(f"c=1 ratio per round: {', '.join(f'{x:.2f}' for x in per_round)}")
    print(f"failed feeds: memory {mem.failed}, redis {red.failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
