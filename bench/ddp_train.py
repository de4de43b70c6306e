"""Training tokens/s with N data-parallel processes against one process, in one run.

    python -m bench.ddp_train [--steps 40] [--rounds 2] [--nproc 2]

Each round trains every setup once, interleaved, through the train CLI as a user would run
it (`python -m models.train ... [--nproc N]`), on the same config at the same global batch:
one process with one torch thread, one process with N threads (all the cores it may use),
and N processes with one thread each. The figure is the trainer's own tokens/s (all ranks'
tokens over the training wall time, validation and start-up excluded). Two shapes: the
built-in corpus with a small LSTM (per-step overhead dominates) and WikiText-2's training
text capped at 10,000 words with a 1 x 256 LSTM (the decoder's matrix products dominate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.device import cpu_name  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "train.txt"

SHAPES: dict[str, list[str]] = {
    "builtin, lstm 1x128": [
        "--builtin", "--arch", "lstm", "--hidden-size", "128", "--embedding-size", "64",
        "--batch-size", "32", "--bptt", "35",
    ],
    "wikitext-2 10k words, lstm 1x256": [
        "--train", str(WIKITEXT), "--valid-fraction", "0.02", "--max-vocab", "10000",
        "--arch", "lstm", "--hidden-size", "256", "--embedding-size", "128",
        "--batch-size", "32", "--bptt", "35",
    ],
}  # fmt: skip


def one_run(shape: list[str], steps: int, nproc: int, threads: int, where: Path) -> float:
    cmd = [
        sys.executable, "-m", "models.train", *shape, "--epochs", "1",
        "--max-steps", str(steps), "--num-threads", str(threads), "--progress", "none",
        "--model-dir", str(where), "--name", "bench", "--device", "cpu",
    ]  # fmt: skip
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    got = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, check=False)
    if got.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{got.stderr[-2000:]}")
    return float(json.loads(got.stdout.strip().splitlines()[-1])["metrics"]["tokens_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="training steps per run")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--nproc", type=int, default=2, help="processes of the DDP setup")
    p.add_argument("--only", choices=sorted(SHAPES), help="one shape only")
    args = p.parse_args(argv)
    n = args.nproc
    setups = {"1 process, 1 thread": (1, 1), f"1 process, {n} threads": (1, n)}
    setups[f"{n} processes x 1 thread"] = (n, 1)
    print(f"{cpu_name()}, {os.cpu_count()} cores; load average at start {os.getloadavg()}")
    for name, shape in SHAPES.items():
        if args.only and name != args.only or ("--train" in shape and not WIKITEXT.is_file()):
            continue
        got: dict[str, list[float]] = {s: [] for s in setups}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for setup, (nproc, threads) in setups.items():
                    got[setup].append(one_run(shape, args.steps, nproc, threads, Path(tmp)))
        base = statistics.median(got["1 process, 1 thread"])
        print(f"\n{name}, {args.steps} steps, {args.rounds} rounds (median tokens/s)")
        print("| setup | tokens/s | vs 1 process, 1 thread | each round |\n|---|---|---|---|")
        for setup, values in got.items():
            med = statistics.median(values)
            rounds = ", ".join(f"{v:,.0f}" for v in values)
            print(f"| {setup} | {med:,.0f} | {med / base:.2f}x | {rounds} |")
    print(f"\nload average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
