"""Model quality on a small WikiText-2 slice: rnn, lstm, gru vs a smoothed unigram model.

    python -m bench.bench_quality [--train-lines 2000] [--epochs 3] [--out FILE.md]

Trains each kind with the same sizes and budget on the first lines of WikiText-2's train
split, validates on a slice of valid, and reports held-out perplexity on a slice of test,
next to an add-one-smoothed unigram model over the same vocabulary and the same tokens (the
standard accounting: every token after the first is a target, one <eos> per line).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.corpus import Corpus, corpus_from_splits  # noqa: E402
from models.device import cpu_name  # noqa: E402
from models.lm import ARCHS  # noqa: E402
from models.train import TrainConfig, train  # noqa: E402

WIKITEXT = Path(__file__).resolve().parent.parent / ".." / "shared" / "data" / "wikitext-2"


def unigram_ppl(corpus: Corpus, ids: torch.Tensor) -> float:
    """Add-one smoothed unigram perplexity of ids[1:] (counts from the training split)."""
    v = len(corpus.tokenizer.vocab)
    counts = torch.bincount(corpus.train, minlength=v).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[ids[1:]].mean().item())


def _slice(src: Path, dst: Path, start: int, count: int) -> None:
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()[start : start + count]
    dst.write_text("".join(lines), encoding="utf-8")


def _machine() -> str:
    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), load average {load:.2f} at the start"
    )


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _slice(WIKITEXT / "train.txt", d / "train.txt", 0, args.train_lines)
        _slice(WIKITEXT / "valid.txt", d / "valid.txt", 0, args.eval_lines)
        _slice(WIKITEXT / "test.txt", d / "test.txt", 0, args.eval_lines)
        corpus = corpus_from_splits(
            d / "train.txt", d / "valid.txt", d / "test.txt", max_vocab=args.max_vocab
        )
    assert corpus.test is not None
    machine = _machine()
    base_ppl = unigram_ppl(corpus, corpus.test)
    rows = []
    for arch in args.archs.split(","):
        cfg = TrainConfig(
            arch=arch,
            embedding_size=args.size,
            hidden_size=args.size,
            tied=True,
            dropout=args.dropout,
            batch_size=20,
            bptt=35,
            epochs=args.epochs,
            seed=0,
            device="cpu",
            progress_interval_s=1e9,
        )
        t0 = time.monotonic()
        res = train(cfg, corpus)
        m = res.metrics
        rows.append(
            (
                arch,
                m["params"],
                m["tokens_per_s"],
                m["val_ppl"],
                m["test_ppl"],
                res.history,
                time.monotonic() - t0,
            )
        )
        print(f"{arch}: test ppl {m['test_ppl']:.1f}", file=sys.stderr)

    cmd = "python -m bench.bench_quality " + shlex.join(sys.argv[1:])
    out = [
        "### Run",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {machine}",
        f"- data: WikiText-2 train lines 1-{args.train_lines} ({corpus.train.numel():,} tokens), "
        f"valid/test lines 1-{args.eval_lines} ({corpus.valid.numel():,} / "
        f"{corpus.test.numel():,} tokens), vocabulary {len(corpus.tokenizer.vocab):,} "
        f"(top {args.max_vocab} of the slice, the rest <unk>)",
        f"- models: embedding = hidden = {args.size}, 1 layer, tied, dropout {args.dropout}, "
        f"batch 20, bptt 35, Adam (lr 3e-3, clip 5), {args.epochs} epochs, seed 0",
        "",
        "| model | params | train tokens/s | val ppl | test ppl | test ppl / unigram | "
        "val ppl by epoch | seconds |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
        f"| unigram (add-one) | {len(corpus.tokenizer.vocab):,} | - | - | {base_ppl:.1f} | 1.00 "
        "| - | - |",
    ]
    for arch, params, tps, val, test, hist, secs in rows:
        curve = " → ".join(f"{h['val_ppl']:.0f}" for h in hist)
        out.append(
            f"| {arch} | {params:,} | {tps:,.0f} | {val:.1f} | {test:.1f} | "
            f"{test / base_ppl:.2f} | {curve} | {secs:.0f} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_quality", description=__doc__)
    p.add_argument("--train-lines", type=int, default=2000)
    p.add_argument("--eval-lines", type=int, default=400)
    p.add_argument("--max-vocab", type=int, default=10000)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="append the Markdown section to this file")
    args = p.parse_args(argv)
    report = run(args)
    print(report)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
