"""The accuracy cost of serving in half precision (`--half bf16|fp16`): the same windows of
WikiText-2 valid through a stored model in float32 and in the half type, compared.

    python -m bench.half_accuracy --model-dir DIR --name NAME [--dtype fp16] [--device cuda]

Use a trained model: on random weights every distribution is flat and the numbers mean little.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
from pathlib import Path

import torch

from models import store
from models.lm import HALF_DTYPES
from service.steps import Step, StepResult, run_steps

VALID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikitext-2" / "valid.txt"


def _distributions(model: torch.nn.Module, windows: list[list[int]]) -> list[dict[int, float]]:
    vocab = model.cfg.vocab_size  # type: ignore[attr-defined]
    out: list[StepResult] = []
    for i in range(0, len(windows), 64):
        out += run_steps(model, [Step(w, top_k=vocab) for w in windows[i : i + 64]])  # type: ignore[arg-type]
    return [dict(zip(r.ids, r.probs, strict=True)) for r in out]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.half_accuracy")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--windows", type=int, default=512)
    p.add_argument("--length", type=int, default=35)
    p.add_argument("--text", type=Path, default=VALID)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bf16", choices=sorted(HALF_DTYPES))
    args = p.parse_args(argv)

    loaded = store.load_version(args.model_dir, args.name)
    loaded.model.to(args.device)
    ids = loaded.tokenizer.vocab.encode(args.text.read_text(encoding="utf-8").split())
    rng = random.Random(0)
    starts = [rng.randrange(len(ids) - args.length - 1) for _ in range(args.windows)]
    windows = [ids[s : s + args.length] for s in starts]
    targets = [ids[s + args.length] for s in starts]
    full = _distributions(loaded.model, windows)
    half = _distributions(copy.deepcopy(loaded.model).to(HALF_DTYPES[args.dtype]), windows)

    def top(d: dict[int, float], k: int) -> list[int]:
        return sorted(d, key=d.__getitem__, reverse=True)[:k]

    n = len(windows)
    top1 = sum(top(a, 1) == top(b, 1) for a, b in zip(full, half, strict=True)) / n
    top5 = sum(len(set(top(a, 5)) & set(top(b, 5))) for a, b in zip(full, half, strict=True))
    max_dp = max(abs(a[w] - b[w]) for a, b in zip(full, half, strict=True) for w in top(a, 5))

    def ppl(ds: list[dict[int, float]]) -> float:
        return math.exp(-sum(math.log(d[t]) for d, t in zip(ds, targets, strict=True)) / n)

    print(
        f"{args.name}@{loaded.version} ({loaded.config.arch} {loaded.config.num_layers} x "
        f"{loaded.config.hidden_size}), {n} windows of {args.length} tokens: "
        f"top-1 agreement {top1:.3f}, top-5 overlap {top5 / (5 * n):.3f}, "
        f"max |dp| over the float32 top-5 {max_dp:.4f}, "
        f"perplexity on the next word float32 {ppl(full):.1f} vs {args.dtype} {ppl(half):.1f}"
    )


if __name__ == "__main__":
    main()
