"""Kernel speed of a trained model: serving (a forward pass over a batch) and the recurrent
module alone, forward and forward+backward, which is where the kinds' cells differ.

Each figure is the median of `repeats` timed calls after one warm-up call; the kinds are
timed one round after another (kind A, B, C, A, B, C, ...) so that a change in the machine's
load falls on all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from models.lm import RNNLM


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _jobs(model: RNNLM, batch: int, bptt: int) -> dict[str, Callable[[], object]]:
    device = model.decoder.weight.device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, bptt), generator=gen).to(device)
    feats = torch.randn(batch, bptt, model.cfg.embedding_size, generator=gen).to(device)

    def serve() -> object:
        with torch.inference_mode():
            return model(ids)[0]

    def core_forward() -> object:
        with torch.inference_mode():
            return model.rnn(feats)[0]

    def core_backward() -> object:
        out, _ = model.rnn(feats)
        out.sum().backward()
        return out

    return {"serve": serve, "core_forward": core_forward, "core_train": core_backward}


def measure(
    models: dict[str, RNNLM], batch: int = 20, bptt: int = 35, repeats: int = 5
) -> dict[str, dict[str, float]]:
    """Per kind: serve_tokens_per_s (the whole model, eval mode) and the recurrent module's
    core_forward_ms and core_train_ms (forward+backward) for a [batch, bptt] input."""
    was_training = {a: m.training for a, m in models.items()}
    for m in models.values():
        m.eval()  # no dropout: the serving path
    jobs = {a: _jobs(m, batch, bptt) for a, m in models.items()}
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for named in jobs.values():
            for fn in named.values():
                fn()  # warm-up: allocations and kernel selection
        for _ in range(repeats):
            for arch, named in jobs.items():
                for name, fn in named.items():
                    times.setdefault((arch, name), []).append(_seconds(fn))
    finally:
        for a, m in models.items():
            m.train(was_training[a])
            m.zero_grad(set_to_none=True)
    out: dict[str, dict[str, float]] = {}
    for arch in models:
        med = {name: statistics.median(times[(arch, name)]) for name in jobs[arch]}
        out[arch] = {
            "serve_tokens_per_s": batch * bptt / med["serve"],
            "core_forward_ms": 1000 * med["core_forward"],
            "core_train_ms": 1000 * med["core_train"],
        }
    return out
