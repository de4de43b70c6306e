"""The HTTP edge under hostile clients: `/healthz` latency and `/predict` throughput with and
without 4 endless-header connections and 200 slow-loris connections, in alternating windows of
one run, plus how fast an oversized header is refused.

The hostile clients run in their own process (`python -m bench.edge hostile`), so the probe
measuring `/healthz` never competes with them for the GIL. The endless-header clients send
`X-Big: aaaa...` 64 KiB a write and reconnect whenever cut off; each slow-loris connection
sends half a request head, then one header byte a second, and reconnects when closed.

    python -m bench.edge [--rounds 2 --seconds 8 --concurrency 16] [--out FILE]
    python -m bench.edge parsers [--rounds 3 --seconds 5 --concurrency 64]

`parsers` prices the guard: undisturbed `/predict` req/s of the same app served by the guarded
httptools protocol (what `python -m service` runs), stock httptools (no limits) and h11 (with
`h11_max_incomplete_event_size`, its only limit), in alternating windows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from . import hey
from .echo import NAME, body, build_tiny, cpu_seconds
from .server import REPO, Server, free_port


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def probe(url: str, seconds: float, hz: float = 50.0) -> list[float]:
    """Sequential GET /healthz on one keep-alive connection; each latency in seconds."""
    out: list[float] = []
    gap = 1.0 / hz
    with httpx.Client(timeout=10) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                ok = client.get(url + "/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - start
            out.append(took if ok else float("inf"))
            time.sleep(max(0.0, gap - took))
    return out


def time_to_431(port: int, trials: int = 10) -> list[float]:
    """Seconds from the first header byte to the refusal (431 read, or the connection cut)."""
    times = []
    for _ in range(trials):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.perf_counter()
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Big: ")
            sock.settimeout(0.01)
            got = b""
            while time.perf_counter() - start < 5 and not got:
                try:
                    sock.sendall(b"a" * 65536)
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    break
                try:
                    got = sock.recv(4096)
                except (TimeoutError, BlockingIOError):
                    continue
                except OSError:
                    break
            times.append(time.perf_counter() - start)
    return times


# The hostile process


def _endless(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    piece = b"a" * 65536
    while not stop.is_set():
        sock = None
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            counts["endless_connections"] += 1
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Big: ")
            while not stop.is_set():
                sock.sendall(piece)
        except OSError:
            pass
        finally:
            with_close(sock)


def with_close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()


def _loris(port: int, n: int, stop: threading.Event, counts: dict[str, int]) -> None:
    socks: list[socket.socket | None] = [None] * n
    while not stop.is_set():
        for i in range(n):
            sock = socks[i]
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: ")
                    counts["loris_connections"] += 1
                else:
                    sock.sendall(b"a")
                socks[i] = sock
            except OSError:
                with_close(sock)
                socks[i] = None
        stop.wait(1.0)
    for sock in socks:
        with_close(sock)


def hostile(port: int, endless: int, loris: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = {"endless_connections": 0, "loris_connections": 0}
    threads = [threading.Thread(target=_endless, args=(port, stop, counts)) for _ in range(endless)]
    threads.append(threading.Thread(target=_loris, args=(port, loris, stop, counts)))
    for t in threads:
        t.daemon = True
        t.start()
    stop.wait()
    print(json.dumps(counts), flush=True)


class Hostile:
    def __init__(self, port: int, endless: int, loris: int) -> None:
        cmd = [sys.executable, "-m", "bench.edge", "hostile", "--port", str(port)]
        cmd += ["--endless", str(endless), "--loris", str(loris)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)  # every connection open before measuring

    def stop(self) -> dict[str, float]:
        """The connections it made, and the CPU seconds the attack itself burnt."""
        cpu = cpu_seconds(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        counts = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        return {**counts, "attacker_cpu_s": round(cpu, 2)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args: argparse.Namespace) -> dict[str, object]:
    hey.require_hey()
    result: dict[str, object] = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="gatehouse-edge-") as tmp:
        model_dir = Path(tmp) / "models"
        build_tiny(model_dir)
        with Server(model_dir, NAME, Path(tmp) / "server.log", {}) as srv:
            hey.run(srv.url + "/predict", body(), args.concurrency, 2.0, warmup_s=0)
            windows: dict[str, dict[str, list[float]]] = {
                k: {"healthz": [], "rps": []} for k in ("calm", "hostile")
            }
            counts: dict[str, float] = {}
            rss = {"calm": rss_mb(srv.proc.pid), "hostile": 0.0}
            for r in range(args.rounds):
                order = ["calm", "hostile"] if r % 2 == 0 else ["hostile", "calm"]
                for kind in order:
                    attack = Hostile(srv.port, 4, 200) if kind == "hostile" else None
                    try:
                        lat = probe(srv.url, args.seconds)
                        x = hey.run(srv.url + "/predict", body(), args.concurrency, args.seconds, 0)
                        if attack is not None:
                            rss["hostile"] = max(rss["hostile"], rss_mb(srv.proc.pid))
                    finally:
                        if attack is not None:
                            for k, v in attack.stop().items():
                                counts[k] = round(counts.get(k, 0) + v, 2)
                    windows[kind]["healthz"] += lat
                    windows[kind]["rps"].append(x.rps)
                    print(
                        f"round {r} {kind}: healthz p99 {_percentile(lat, 99) * 1000:.1f} ms, "
                        f"/predict {x.rps:.0f} req/s, failed {x.failed}",
                        file=sys.stderr,
                    )
            refusals = time_to_431(srv.port)
    for kind, w in windows.items():
        result[kind] = {
            "healthz_p50_ms": round(_percentile(w["healthz"], 50) * 1000, 2),
            "healthz_p99_ms": round(_percentile(w["healthz"], 99) * 1000, 2),
            "healthz_samples": len(w["healthz"]),
            "predict_rps_median": round(statistics.median(w["rps"]), 1),
            "predict_rps": [round(v, 1) for v in w["rps"]],
        }
    calm, bad = result["calm"], result["hostile"]
    result["predict_rps_ratio"] = round(bad["predict_rps_median"] / calm["predict_rps_median"], 3)  # type: ignore[index]
    result["rss_mb"] = {k: round(v, 1) for k, v in rss.items()}
    result["hostile_clients"] = counts
    result["oversized_header_refused_s"] = {
        "median": round(statistics.median(refusals), 4),
        "max": round(max(refusals), 4),
    }
    result["load_after"] = os.getloadavg()[0]
    return result


PARSERS = ("guarded", "httptools", "h11")


def serve_with(port: int, model_dir: Path, parser: str) -> None:
    """The real app under uvicorn with one of PARSERS (a bench-only way to start it)."""
    from service import logs
    from service.server import GracefulServer, build_config
    from service.settings import Settings

    settings = Settings(port=port, model_dir=model_dir, no_bootstrap=True, default_model=NAME)
    logs.configure_logging("warning")
    config = build_config(settings)
    if parser != "guarded":
        config.http = parser
        config.h11_max_incomplete_event_size = settings.max_header_bytes
    GracefulServer(config).run()


def compare_parsers(args: argparse.Namespace) -> dict[str, object]:
    hey.require_hey()
    result: dict[str, object] = {"load_before": os.getloadavg()[0]}
    rps: dict[str, list[float]] = {p: [] for p in PARSERS}
    with tempfile.TemporaryDirectory(prefix="gatehouse-parsers-") as tmp:
        procs, urls = {}, {}
        try:
            for parser in PARSERS:
                model_dir = Path(tmp) / parser / "models"  # one store each: one jobs owner each
                build_tiny(model_dir)
                port = free_port()
                cmd = [sys.executable, "-m", "bench.edge", "serve", "--port", str(port)]
                cmd += ["--model-dir", str(model_dir), "--http", parser]
                procs[parser] = subprocess.Popen(cmd, cwd=REPO)
                urls[parser] = f"http://127.0.0.1:{port}"
            for url in urls.values():
                _wait(url)
                hey.run(url + "/predict", body(), args.concurrency, 2.0, warmup_s=0)
            for r in range(args.rounds):
                order = PARSERS[r % 3 :] + PARSERS[: r % 3]
                for parser in order:
                    x = hey.run(
                        urls[parser] + "/predict", body(), args.concurrency, args.seconds, 0
                    )
                    rps[parser].append(round(x.rps, 1))
                    print(f"round {r} {parser}: {x.rps:.0f} req/s", file=sys.stderr)
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(30)
    result["rps"] = rps
    base = statistics.median(rps["httptools"])
    result["ratio_to_stock_httptools"] = {
        p: round(statistics.median(v) / base, 3) for p, v in rps.items()
    }
    result["load_after"] = os.getloadavg()[0]
    return result


def _wait(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.edge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    h = sub.add_parser("hostile", help="run the hostile clients alone until SIGTERM")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--endless", type=int, default=4)
    h.add_argument("--loris", type=int, default=200)
    sv = sub.add_parser("serve", help="the app under one HTTP protocol (for `parsers`)")
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--model-dir", type=Path, required=True)
    sv.add_argument("--http", choices=PARSERS, default="guarded")
    sub.add_parser("parsers", help="undisturbed /predict req/s under each HTTP protocol")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.cmd == "hostile":
        hostile(args.port, args.endless, args.loris)
        return 0
    if args.cmd == "serve":
        serve_with(args.port, args.model_dir, args.http)
        return 0
    result = compare_parsers(args) if args.cmd == "parsers" else run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
