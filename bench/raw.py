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


def pass_times(model: RNNLM, batch: int, tokens: int = 9, seconds: float = 3.0) -> list[float]:
    """Seconds per forward pass over `batch` rows of `tokens` ids, softmax and top-5 included."""
    gen = torch.Generator().manual_seed(batch)
    device = model.decoder.weight.device
    ids = torch.randint(model.cfg.vocab_size, (batch, tokens), generator=gen).to(device)
    lengths = torch.full((batch,), tokens)  # packing wants lengths on the CPU
    # CUDA runs asynchronously: a pass is timed to its results, not to its launch.
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times: list[float] = []
    with torch.inference_mode():
        # The server warms every version up to its largest batch, and so must the floor: one
        # big pass raises glibc's mmap threshold past the [rows, vocab] logits, after which
        # they come from the heap instead of fresh pages. Batch 1 on this CPU: ~19 ms cold,
        # ~13 ms after it.
        big = torch.zeros((64, tokens), dtype=torch.long, device=device)
        model.forward_last(big, torch.full((64,), tokens))
        for _ in range(3):  # kernel selection at this shape
            model.forward_last(ids, lengths)
        sync()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            start = time.perf_counter()
            logits, _ = model.forward_last(ids, lengths)
            torch.topk(torch.softmax(logits, -1), 5)
            sync()
            times.append(time.perf_counter() - start)
    return times


def percentile(sorted_xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of an ascending list, by rank: no interpolation."""
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


def measure(model: RNNLM, batch: int, tokens: int = 9, seconds: float = 3.0) -> RawResult:
    times = sorted(pass_times(model, batch, tokens, seconds))
    return RawResult(
        batch=batch,
        dtype=str(model.decoder.weight.dtype).removeprefix("torch."),
        qps=batch * len(times) / sum(times),
        p50=statistics.median(times),
        p99=percentile(times, 0.99),
    )
