"""Session step latency at a short and a long history: carrying the state should make a
one-word step cost the same whatever came before it."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import httpx


@dataclass
class StepLatency:
    history: int
    steps: int
    p50: float  # seconds per one-word feed, over HTTP
    p90: float
    predict_p50: float  # seconds for POST /predict on the whole history (the stateless way)


def measure(
    url: str, model: str, words: list[str], history: int, steps: int = 40, seed: int = 0
) -> StepLatency:
    rng = random.Random(seed)
    text = " ".join(rng.choice(words) for _ in range(history))
    with httpx.Client(base_url=url, timeout=60) as client:
        created = client.post("/sessions", json={"model": model})
        created.raise_for_status()
        sid = created.json()["session_id"]
        client.headers["x-session-token"] = created.json()["session_token"]
        fed = client.post(f"/sessions/{sid}/feed", json={"text": text, "top_k": 5})
        fed.raise_for_status()
        assert fed.json()["history_length"] == history, fed.json()["history_length"]
        times: list[float] = []
        for _ in range(steps):
            start = time.perf_counter()
            r = client.post(f"/sessions/{sid}/feed", json={"text": rng.choice(words), "top_k": 5})
            times.append(time.perf_counter() - start)
            r.raise_for_status()
        client.delete(f"/sessions/{sid}")
        whole: list[float] = []
        for _ in range(max(3, steps // 8)):
            start = time.perf_counter()
            client.post("/predict", json={"model": model, "text": text}).raise_for_status()
            whole.append(time.perf_counter() - start)
    times.sort()
    return StepLatency(
        history=history,
        steps=steps,
        p50=statistics.median(times),
        p90=times[int(0.9 * (len(times) - 1))],
        predict_p50=statistics.median(whole),
    )
