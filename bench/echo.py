"""The request path's own cost: `/predict` on the tiny default LSTM against a bare echo app.

The echo app is FastAPI + uvicorn with the same request schema (`PredictRequest`) that answers
a constant body of the same size as the server's answer: whatever the server adds beyond it is
the cost of Gatehouse's request path (routing, limits, metrics, logs, batching, the model).
The tiny model (embedding 64, 1 x 128 LSTM, the built-in corpus's vocabulary) costs well under
a millisecond per batch, so the ratio shows the Python around the model, not the model.

Both servers run at once; `hey` windows alternate between them (server first in even rounds,
echo first in odd ones), so both meet the same machine. Each side's req/s is the median of its
windows, its p99 the median of the windows' p99s.

    python -m bench.echo [--rounds 4 --seconds 6 --concurrency 64]
    python -m bench.echo serve --port P --response FILE   # the echo app alone
    python -m bench.echo layers [-n 20000 --repeats 5]    # each ASGI layer's CPU, in-process
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import uvicorn
from fastapi import FastAPI

from models import store
from models.corpus import corpus_from_builtin
from models.lm import RNNLM, ModelConfig
from service.schemas.predict import PredictRequest

from . import hey
from .server import REPO, Server, free_port

NAME = "lstm"
TEXT = "i grew up in france . the clouds are in the sky . i speak fluent"


def build_tiny(model_dir: Path, seed: int = 0) -> ModelConfig:
    """The embedded default LSTM's shape and vocabulary, random weights (speed only)."""
    tokenizer = corpus_from_builtin("longrange", 0, lowercase=True).tokenizer
    cfg = ModelConfig("lstm", len(tokenizer.vocab), 64, 128, 1)
    torch.manual_seed(seed)
    store.save_version(model_dir, NAME, RNNLM(cfg).eval(), tokenizer, {"bench": "echo"})
    return cfg


def echo_app(response: dict[str, object]) -> FastAPI:
    """A bare FastAPI app: the request is parsed and validated like the server's, the answer
    is a constant."""
    app = FastAPI()

    @app.post("/predict")
    async def predict(body: PredictRequest) -> dict[str, object]:
        return response

    return app


def serve_echo(port: int, response_file: Path) -> None:
    app = echo_app(json.loads(response_file.read_text()))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Echo:
    def __init__(self, response_file: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "bench.echo", "serve", "--port", str(self.port)]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [*cmd, "--response", str(response_file)], cwd=REPO, stdout=self._log, stderr=self._log
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.post(self.url + "/predict", json=json.loads(body()), timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError("echo app not up after 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self._log.close()


def body() -> str:
    return json.dumps({"model": NAME, "text": TEXT, "top_k": 5})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    rps: list[float]
    p99: list[float]
    cpu_ms: list[float]  # the server process's CPU per request, per window
    failed: int = 0

    @property
    def rps_median(self) -> float:
        return statistics.median(self.rps)

    @property
    def p99_median(self) -> float:
        return statistics.median(self.p99)

    @property
    def cpu_ms_median(self) -> float:
        return statistics.median(self.cpu_ms)


def compare(
    urls: dict[str, str], pids: dict[str, int], rounds: int, seconds: float, c: int
) -> dict[str, Side]:
    sides = {name: Side([], [], []) for name in urls}
    for url in urls.values():  # unmeasured: connections, caches, allocator
        hey.run(url + "/predict", body(), c, 2.0, warmup_s=0)
    for r in range(rounds):
        order = ["server", "echo"] if r % 2 == 0 else ["echo", "server"]
        for name in order:
            cpu = cpu_seconds(pids[name])
            x = hey.run(urls[name] + "/predict", body(), c, seconds, warmup_s=0)
            cpu = cpu_seconds(pids[name]) - cpu
            side = sides[name]
            side.cpu_ms.append(1000 * cpu / max(1, x.ok))
            side.rps.append(x.rps)
            side.p99.append(x.p(99) or float("nan"))
            side.failed += x.failed
            print(f"round {r} {name}: {x.rps:.0f} req/s, p99 {x.p(99)} s", file=sys.stderr)
    return sides


def report(sides: dict[str, Side], c: int, seconds: float) -> str:
    s, e = sides["server"], sides["echo"]
    lines = [
        f"| c={c}, {len(s.rps)} x {seconds:g} s windows | req/s (median) | p99 ms (median) "
        "| server CPU ms per request (median) | failed |",
        "|---|---|---|---|---|",
        f"| Gatehouse /predict, tiny LSTM | {s.rps_median:.0f} | {s.p99_median * 1000:.1f} "
        f"| {s.cpu_ms_median:.3f} | {s.failed} |",
        f"| bare FastAPI echo | {e.rps_median:.0f} | {e.p99_median * 1000:.1f} "
        f"| {e.cpu_ms_median:.3f} | {e.failed} |",
        f"| ratio | **{s.rps_median / e.rps_median:.2f}x** (target >= 0.7) "
        f"| **{s.p99_median / e.p99_median:.2f}x** (target <= 2) "
        f"| {s.cpu_ms_median / e.cpu_ms_median:.2f}x | |",
        "",
        "per round (server/echo req/s): "
        + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(s.rps, e.rps, strict=True)),
    ]
    return "\n".join(lines)


# In-process: each ASGI layer's own CPU per request


def _layer_apps() -> dict[str, object]:
    """The same trivial endpoint behind each layer (or stack of layers) of the request path."""
    from service import logs, metrics
    from service.edge import EdgeMiddleware
    from service.error_shapes import ErrorShape, ErrorShapes
    from service.limits import BodyLimitMiddleware
    from service.oip import errors as oip_errors
    from service.openai import errors as openai_errors

    answer = json.dumps({"predictions": [{"word": "x", "prob": 0.5}] * 5}).encode()

    async def endpoint(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": answer})

    shapes = {"/v1": openai_errors.translate, "/v2": oip_errors.translate}
    limit = {"max_body_bytes": 1_000_000, "max_upload_bytes": 50_000_000}
    old_shapes = ErrorShape(
        ErrorShape(BodyLimitMiddleware(endpoint, **limit), "/v1", openai_errors.translate),
        "/v2",
        oip_errors.translate,
    )
    return {
        "bare endpoint": endpoint,
        "body limit": BodyLimitMiddleware(endpoint, **limit),
        "error shapes, two layers": ErrorShape(
            ErrorShape(endpoint, "/v1", openai_errors.translate), "/v2", oip_errors.translate
        ),
        "error shapes, one layer": ErrorShapes(endpoint, shapes),
        "metrics layer": metrics.MetricsMiddleware(endpoint),
        "access-log layer": logs.RequestLogMiddleware(endpoint),
        "access log + metrics, two layers": logs.RequestLogMiddleware(
            metrics.MetricsMiddleware(endpoint)
        ),
        "edge layer (access log + metrics + HEAD)": EdgeMiddleware(endpoint),
        "before: log, metrics, 2 shapes, limit": logs.RequestLogMiddleware(
            metrics.MetricsMiddleware(old_shapes)
        ),
        "now: edge, shapes, limit": EdgeMiddleware(
            ErrorShapes(BodyLimitMiddleware(endpoint, **limit), shapes)
        ),
    }


def layer_costs(n: int, repeats: int) -> dict[str, float]:
    """Microseconds of CPU per request through each app of `_layer_apps`, the best of
    `repeats` runs of `n` requests (the best: the machine's noise only ever adds)."""
    import asyncio
    import logging

    from service.logs import JsonFormatter

    # The access line is formatted and written as the server does, to /dev/null.
    sink = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the run)
    sink.setFormatter(JsonFormatter())
    access = logging.getLogger("gatehouse.access")
    access.addHandler(sink)
    access.setLevel(logging.INFO)
    access.propagate = False
    body_bytes = body().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body_bytes))]

    async def one(app) -> None:  # type: ignore[no-untyped-def]
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body_bytes, "more_body": False}

        async def send(message: dict[str, object]) -> None:
            pass

        await app(scope, receive, send)

    async def bench(app) -> float:  # type: ignore[no-untyped-def]
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            for _ in range(n):
                await one(app)
            best = min(best, (time.process_time() - start) / n)
        return best

    out = {}
    for name, app in _layer_apps().items():
        out[name] = round(asyncio.run(bench(app)) * 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.echo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    serve = sub.add_parser("serve", help="run the echo app alone")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--response", type=Path, required=True)
    layers = sub.add_parser("layers", help="in-process CPU per request of each ASGI layer")
    layers.add_argument("-n", type=int, default=20_000)
    layers.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--torch-threads", type=int, default=0, help="0: the server's default")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve_echo(args.port, args.response)
        return 0
    if args.cmd == "layers":
        for name, us in layer_costs(args.n, args.repeats).items():
            print(f"| {name} | {us:.1f} |")
        return 0
    hey.require_hey()
    with tempfile.TemporaryDirectory(prefix="gatehouse-echo-") as tmp:
        model_dir = Path(tmp) / "models"
        build_tiny(model_dir)
        env = {"GATEHOUSE_TORCH_THREADS": str(args.torch_threads)} if args.torch_threads else {}
        with Server(model_dir, NAME, Path(tmp) / "server.log", env) as srv:
            answer = httpx.post(srv.url + "/predict", json=json.loads(body()), timeout=10)
            answer.raise_for_status()
            response_file = Path(tmp) / "response.json"
            response_file.write_bytes(answer.content)
            echo = Echo(response_file, Path(tmp) / "echo.log")
            try:
                sides = compare(
                    {"server": srv.url, "echo": echo.url},
                    {"server": srv.proc.pid, "echo": echo.proc.pid},
                    args.rounds,
                    args.seconds,
                    args.concurrency,
                )
            finally:
                echo.stop()
    text = report(sides, args.concurrency, args.seconds)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
