"""Gate inspection vs the fused forward: time for one sequence of N tokens.

    python -m bench.bench_gates [--tokens 512] [--hidden 650] [--layers 2] [--vocab 33278]

The fair baseline is `forward_last` (fused recurrence + decoder at the last token only, which
is what inspection computes); `forward` (decoder at every token) is shown for reference.
Target: inspect <= 3x forward_last for 512 tokens on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.gates import inspect  # noqa: E402
from models.lm import ARCHS, RNNLM, ModelConfig  # noqa: E402

TARGET_RATIO = 3.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_times(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per function. Runs are interleaved (a, b, c, a, b, c, ...) so a load
    change on a shared machine hits every function alike instead of skewing the ratio."""
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def bench_arch(arch: str, args: argparse.Namespace) -> dict[str, float | str]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = ModelConfig(arch, args.vocab, args.hidden, args.hidden, args.layers, 0.5, tied=True)
    model = RNNLM(cfg).to(device).eval()
    ids = torch.randint(0, args.vocab, (args.tokens,), device=device)
    lengths = torch.tensor([args.tokens])
    with torch.no_grad():
        t = _median_times(
            {
                "inspect": lambda: inspect(model, ids),
                "forward_last": lambda: model.forward_last(ids[None], lengths),
                "forward": lambda: model(ids[None]),
            },
            args.repeats,
            device,
        )
    return {
        "arch": arch,
        "inspect_ms": 1000 * t["inspect"],
        "forward_last_ms": 1000 * t["forward_last"],
        "forward_ms": 1000 * t["forward"],
        "ratio_vs_forward_last": t["inspect"] / t["forward_last"],
        "ratio_vs_forward": t["inspect"] / t["forward"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, action="append", help="repeatable; default all")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--hidden", type=int, default=650, help="embedding = hidden (tied)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=33278, help="default: WikiText-2's size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {args.threads}, device {args.device}; {args.layers}x{args.hidden}, "
        f"vocab {args.vocab}, {args.tokens} tokens, median of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if not args.json:
        print(f"{'arch':<5} {'inspect':>10} {'fwd_last':>10} {'forward':>10} {'ratio':>7}")
    worst = 0.0
    for arch in args.arch or ARCHS:
        r = bench_arch(arch, args)
        worst = max(worst, float(r["ratio_vs_forward_last"]))
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{arch:<5} {r['inspect_ms']:>8.1f}ms {r['forward_last_ms']:>8.1f}ms "
                f"{r['forward_ms']:>8.1f}ms {r['ratio_vs_forward_last']:>6.2f}x"
            )
    verdict = "within" if worst <= TARGET_RATIO else "OVER"
    print(f"# worst inspect/forward_last ratio {worst:.2f}x: {verdict} the {TARGET_RATIO}x target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
