"""Peak memory of real trainings against `service.jobs.memory`'s estimate.

    python -m bench.train_memory [--steps 3] [--only N]

Each configuration trains in a fresh child process (one torch thread, CPU) for `--steps`
steps on WikiText-2's training text capped at the configuration's vocabulary, checkpointing
as a job's worker does. The child reports its resident set at the start of training (torch
imported, corpus read) and its peak resident set (`VmHWM`, reset through
/proc/self/clear_refs at that start) while it trains. The table compares the measured peak
with the estimate; the estimate should not fall below it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.jobs.memory import estimate_training_memory  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2" / "train.txt"
MiB = 1 << 20

# (arch, vocab, embedding, hidden, layers, batch, bptt): each term dominant in turn.
CONFIGS: list[tuple[str, int, int, int, int, int, int]] = [
    ("lstm", 2_000, 64, 64, 1, 20, 35),  # close to the process alone
    ("lstm", 20_000, 128, 128, 1, 64, 64),  # logits dominate
    ("gru", 10_000, 128, 128, 2, 128, 64),
    ("lstm", 5_000, 256, 512, 2, 64, 128),  # gates and states dominate
    ("rnn", 30_000, 256, 256, 1, 32, 64),  # weights and Adam state
    ("lstm", 10_000, 650, 650, 2, 20, 35),  # the WikiText-2 "medium" shape
]

CHILD = r"""
import json, sys
import torch
from models.corpus import corpus_from_text
from models.train import TrainConfig, train

arch, vocab, emb, hid, layers, batch, bptt, steps, path = json.loads(sys.argv[1])
torch.set_num_threads(1)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
text = open(path, encoding="utf-8").read()[:3_000_000]
corpus = corpus_from_text(text, valid_fraction=0.01, max_vocab=vocab)
del text
import gc; gc.collect()
with open("/proc/self/clear_refs", "w") as f:  # the peak from here on: training only
    f.write("5")
start = status("VmRSS")
cfg = TrainConfig(arch=arch, embedding_size=emb, hidden_size=hid, num_layers=layers,
                  batch_size=batch, bptt=bptt, epochs=1, max_steps=steps, dropout=0.0,
                  max_vocab=vocab, num_threads=1, device="cpu", eval_batch_size=10)
import tempfile
with tempfile.TemporaryDirectory() as checkpoints:  # as a job's worker does: checkpointed
    train(cfg, corpus, checkpoint_dir=checkpoints)
print(json.dumps({"vocab": len(corpus.tokenizer.vocab), "start": start, "peak": status("VmHWM")}))
"""


def measure(config: tuple[str, int, int, int, int, int, int], steps: int) -> dict[str, Any]:
    arch, vocab, emb, hid, layers, batch, bptt = config
    args = json.dumps([arch, vocab, emb, hid, layers, batch, bptt, steps, str(WIKITEXT)])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, args], cwd=REPO, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    est = estimate_training_memory(arch, got["vocab"], emb, hid, layers, False, batch, bptt)
    return {"config": config, **got, "estimate": est.total, "activations": est.activations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_memory")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", type=int, default=None, help="run configuration N only")
    args = parser.parse_args(argv)
    picked = CONFIGS if args.only is None else [CONFIGS[args.only]]
    print(
        "| arch | vocab | emb | hidden x layers | batch x bptt | RSS at start | peak RSS "
        "| estimate | estimate / peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for config in picked:
        r = measure(config, args.steps)
        arch, _, emb, hid, layers, batch, bptt = config
        print(
            f"| {arch} | {r['vocab']} | {emb} | {hid} x {layers} | {batch} x {bptt} "
            f"| {r['start'] / MiB:.0f} MiB | {r['peak'] / MiB:.0f} MiB "
            f"| {r['estimate'] / MiB:.0f} MiB | {r['estimate'] / r['peak']:.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
