"""What the client protocols cost over `/predict`, and `/score` against one `/predict` batch.

`/v1/completions` (one greedy word with logprobs 5) and `/v2/models/lstm/infer` (JSON, top_k 5)
ask the same model the same question as `/predict` (top_k 5); `hey` windows at concurrency 64
alternate between the three routes, so all meet the same machine, and each route's req/s is
the median of its windows. Targets: both >= 0.9x `/predict`. Then `/score` on 64 texts of 35
words against `/predict` on the same 64 texts (median of 21 sequential requests each): one
batched pass over every position should cost <= 1.5x the last-position pass.

    python -m bench.protocols [--rounds 3 --seconds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.protocols", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args(argv)
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
