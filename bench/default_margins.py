"""How far the embedded defaults clear their long-range promise, under this process's kernels.

Trains the defaults (as `make serve` does) into a temporary store and prints, per model, the
smallest margin over the built-in prompts (every country x 1-4 fillers): the right language's
probability, and its ratio to the runner-up word. The promise checked by
tests/models/test_defaults.py is p > 0.5 and p > 3x the runner-up. Run it once per kernel
family to see how close each comes, e.g.

    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m bench.default_margins
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

from models import store
from models.builtin import promise_prompts
from models.defaults import train_defaults
from models.evaluate import next_word_probs


def margins(model_dir: str, name: str) -> dict[str, float]:
    loaded = store.load_version(model_dir, name)
    cases = promise_prompts()
    probs = next_word_probs(loaded.model, loaded.tokenizer, [p for p, _ in cases])
    stoi = loaded.tokenizer.vocab.stoi
    worst_p, worst_ratio = 1.0, float("inf")
    for (_, language), p in zip(cases, probs, strict=True):
        i = stoi[language]
        target = p[i].item()
        runner_up = torch.cat([p[:i], p[i + 1 :]]).max().item()
        worst_p = min(worst_p, target)
        worst_ratio = min(worst_ratio, target / runner_up)
    return {"min_prob": round(worst_p, 4), "min_ratio": round(worst_ratio, 2)}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        train_defaults(tmp, log=lambda line: print(line, file=sys.stderr))
        seconds = time.monotonic() - start
        report = {
            "capability": torch.backends.cpu.get_cpu_capability(),
            "env": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "bootstrap_s": round(seconds, 1),
            **{name: margins(tmp, name) for name in ("rnn", "lstm", "gru")},
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
