"""What keeping sessions in Redis costs a feed: the same server, in-memory vs Redis-backed.

Two real servers on one model store (an LSTM of the given size, random weights) run side by
side, one with `--session-store memory`, one with `--session-store redis://...` (a real
redis-server this benchmark starts, no persistence). Windows alternate between them, so both
meet the same machine:

- c=1: one session on each server, fed one word at a time, the two servers taking turns feed
  by feed (`--feeds` pairs per round), so each pair meets the same moment of the machine's
  load: the latency of a feed;
- c=N: N sessions, each fed one word at a time by its own client in a loop for `--seconds`,
  one server per window: req/s and p99 (feeds of different sessions batch together), and the
  CPU time the server process (and redis-server) spent per feed, read from /proc: the figure
  least disturbed by other work on a shared machine.

Each figure is the median over `--rounds`. Target: a Redis-backed feed costs at most 1.3x the
in-memory one (c=1 p50 latency ratio; c=N req/s ratio inverted; CPU per feed ratio).

`--in-process` measures the stores alone, without HTTP: one process, the real batcher, a
real redis-server; the CPU time of this process per sequential feed (lookup + step + keep),
memory and Redis taking turns in windows of 100 feeds.

    python -m bench.session_store [--rounds 5 --seconds 5 --concurrency 32 --hidden 650 --layers 2]
    python -m bench.session_store --in-process [--rounds 6]
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
from models.device import cpu_name
from models.lm import RNNLM, ModelConfig

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
    cpu_ms: list[float] = field(default_factory=list)  # server process CPU per feed, c=N
    redis_cpu_ms: list[float] = field(default_factory=list)  # redis-server CPU per feed, c=N
    c1_times: list[float] = field(default_factory=list)
    failed: int = 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    try:
        r = await client.post(
            f"/sessions/{sid}/feed",
            json={"text": word, "top_k": 5},
            headers={"x-session-token": token},
        )
    except httpx.TransportError as e:  # counted as a failed feed, and named
        print(f"feed failed: {type(e).__name__}: {e}")
        return False
    if r.status_code != 200:
        print(f"feed failed: {r.status_code} {r.text[:200]}")
    return r.status_code == 200


async def _c1(backends: list[Backend], feeds: int, rng: random.Random) -> None:
    clients = [httpx.AsyncClient(base_url=b.server.url, timeout=60) for b in backends]
    times: list[list[float]] = [[] for _ in backends]
    try:
        for i in range(feeds):
            word = rng.choice(WORDS)
            order = range(len(backends)) if i % 2 == 0 else reversed(range(len(backends)))
            for j in order:
                sid, token = backends[j].sessions[0]
                start = time.perf_counter()
                ok = await _feed(clients[j], sid, token, word)
                times[j].append(time.perf_counter() - start)
                backends[j].failed += not ok
    finally:
        for c in clients:
            await c.aclose()
    for b, t in zip(backends, times, strict=True):
        b.c1_p50.append(statistics.median(t))
        b.c1_times += t


async def _cn(b: Backend, seconds: float, rng: random.Random, redis_pid: int) -> None:
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
        cpu, redis_cpu = cpu_seconds(b.server.proc.pid), cpu_seconds(redis_pid)
        await asyncio.gather(*(worker(s, t) for s, t in workers))
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(b.server.proc.pid) - cpu
        redis_cpu = cpu_seconds(redis_pid) - redis_cpu
    times.sort()
    b.rps.append(len(times) / elapsed)
    b.p99.append(times[int(0.99 * (len(times) - 1))])
    b.cpu_ms.append(cpu / len(times) * 1e3)
    b.redis_cpu_ms.append(redis_cpu / len(times) * 1e3)


async def _run(backends: list[Backend], args: argparse.Namespace, redis_pid: int) -> None:
    rng = random.Random(0)
    for b in backends:
        async with httpx.AsyncClient(base_url=b.server.url, timeout=60) as client:
            b.sessions = await _open(client, args.concurrency + 1)
            for sid, token in b.sessions:  # warm: every session has a state from here on
                await _feed(client, sid, token, "the")
    for r in range(args.rounds):
        await _c1(backends, args.feeds, rng)
        for b in backends if r % 2 == 0 else reversed(backends):
            await _cn(b, args.seconds, rng, redis_pid)


async def _in_process(model_dir: Path, url: str, rounds: int) -> dict[str, list[float]]:
    from service.batcher import DynamicBatcher
    from service.session_store.redis_store import RedisSessionStore
    from service.sessions import SessionStore
    from service.steps import run_steps

    loaded = store.load_version(model_dir, NAME, 1)
    batcher: DynamicBatcher = DynamicBatcher(
        lambda m, steps: run_steps(m.model, steps), max_batch_size=16, max_queue=100
    )
    stores = {
        "memory": SessionStore(batcher.submit),
        "redis": RedisSessionStore(url, batcher.submit, lambda n, v: loaded),
    }
    enc = loaded.tokenizer.encode("the")
    opened = {}
    for name, st in stores.items():
        opened[name] = await st.create_session(loaded)
        for _ in range(10):  # warm
            s = opened[name]
            await st.feed_with(await st.authorize_session(s.id, s.token), enc, id)
    cpu: dict[str, list[float]] = {name: [] for name in stores}
    for r in range(rounds):
        for name in stores if r % 2 == 0 else reversed(stores):
            st, s = stores[name], opened[name]
            start = time.process_time()
            for _ in range(100):
                await st.feed_with(await st.authorize_session(s.id, s.token), enc, id)
            cpu[name].append((time.process_time() - start) / 100 * 1e3)
    await stores["redis"].close()
    await batcher.close()
    return cpu


def in_process_main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="gatehouse-session-store-") as tmp:
        folder = Path(tmp)
        cfg = build_model(folder / "models", args.hidden, args.layers)
        redis_proc, url = start_redis(folder)
        try:
            load = os.getloadavg()
            cpu = asyncio.run(_in_process(folder / "models", url, args.rounds))
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; load average at start {load[0]:.1f}")
    print(f"model: lstm {cfg.num_layers}x{cfg.hidden_size}; 1 torch thread; {args.rounds} rounds")
    for name, values in cpu.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: CPU ms per feed, median {statistics.median(values):.2f} ({shown})")
    ratio = statistics.median(cpu["redis"]) / statistics.median(cpu["memory"])
    print(f"redis / memory: {ratio:.2f}x (target <= 1.3)")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.session_store", description=__doc__)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each c=N window")
    p.add_argument("--feeds", type=int, default=100, help="c=1 feed pairs per round")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--hidden", type=int, default=650)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--in-process", action="store_true", help="the stores alone, no HTTP")
    args = p.parse_args(argv)
    if args.in_process:
        return in_process_main(args)
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
                asyncio.run(_run(backends, args, redis_proc.pid))
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
    n = args.concurrency
    print(
        f"| store | c=1 p50 ms | c=1 p90 ms | c={n} req/s | c={n} p99 ms | "
        f"server CPU ms/feed | redis-server CPU ms/feed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b in backends:
        t = sorted(b.c1_times)
        print(
            f"| {b.name} | {statistics.median(b.c1_p50) * 1e3:.2f} | "
            f"{t[int(0.9 * (len(t) - 1))] * 1e3:.2f} | {statistics.median(b.rps):,.0f} | "
            f"{statistics.median(b.p99) * 1e3:.1f} | {statistics.median(b.cpu_ms):.2f} | "
            f"{statistics.median(b.redis_cpu_ms):.2f} |"
        )
    lat = statistics.median(red.c1_p50) / statistics.median(mem.c1_p50)
    thr = statistics.median(mem.rps) / statistics.median(red.rps)
    cpu = statistics.median(red.cpu_ms) / statistics.median(mem.cpu_ms)
    both = (statistics.median(red.cpu_ms) + statistics.median(red.redis_cpu_ms)) / (
        statistics.median(mem.cpu_ms)
    )
    per_round = [r / m for r, m in zip(red.c1_p50, mem.c1_p50, strict=True)]
    print(f"\nredis / memory, c=1 feed latency (p50): {lat:.2f}x (target <= 1.3)")
    print(f"memory / redis, c={n} req/s: {thr:.2f}x (target <= 1.3)")
    print(
        f"redis / memory, server CPU per feed at c={n}: {cpu:.2f}x; "
        f"with redis-server's: {both:.2f}x"
    )
    print(f"c=1 p50 ratio per round: {', '.join(f'{x:.2f}' for x in per_round)}")
    print(f"failed feeds: memory {mem.failed}, redis {red.failed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
