"""The raw model in-process, no HTTP: the floor that serving overhead is measured against."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from models.lm import RNNLM


@dataclass
class RawResult:
    batch: int
    dtype: str
    qps: float  # queries (rows) per second
    p50: float  # seconds per forward pass
    p99: float


def measure(model: RNNLM, batch: int, tokens: int = 9, seconds: float = 3.0) -> RawResult:
    """One forward pass over `batch` rows of `tokens` ids, softmax and top-5 included."""
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(model.cfg.vocab_size, (batch, tokens), generator=gen)
    lengths = torch.full((batch,), tokens)
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(3):  # warm-up: kernel selection, allocator
            model.forward_last(ids, lengths)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            logits, _ = model.forward_last(ids, lengths)
            torch.topk(torch.softmax(logits, -1), 5)
            times.append(time.perf_counter() - start)
    times.sort()
    return RawResult(
        batch=batch,
        dtype=str(model.decoder.weight.dtype).removeprefix("torch."),
        qps=batch * len(times) / sum(times),
        p50=statistics.median(times),
        p99=times[min(len(times) - 1, int(0.99 * len(times)))],
    )
