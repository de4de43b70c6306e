"""`python -m bench.sgd_init`: why the anchor recipe (SGD lr 20, clip 0.25) trains badly with
our default initialisation, and well with PyTorch's.

One epoch of WikiText-2 in the anchor's shape (LSTM 2 x 650 tied, dropout 0.5, batch 20, bptt
35, fp32) per variant, all variants at once in separate processes (so tokens/s here are not
comparable; validation perplexity is the figure):

- ours:      orthogonal recurrent weights, forget-gate bias 1, decoder bias at the unigram
             log-frequencies (models.lm + TrainConfig.unigram_bias, our defaults)
- nounigram: ours without the unigram decoder bias
- torchinit: PyTorch's default LSTM init (as the anchor), with the unigram decoder bias
- both:      PyTorch's LSTM init, zero decoder bias: the anchor's own initialisation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from torch import nn

from models import trainer
from models.corpus import corpus_from_splits
from models.lm import RNNLM
from models.train import TrainConfig, train

VARIANTS = ("ours", "nounigram", "torchinit", "both")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


class TorchInitLM(RNNLM):
    """The anchor's initialisation: PyTorch's LSTM defaults, embedding uniform +-0.1."""

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        self.rnn.reset_parameters()


def one(variant: str, data: Path, device: str, max_steps: int | None) -> dict[str, float | str]:
    if variant in ("torchinit", "both"):
        trainer.RNNLM = TorchInitLM  # type: ignore[misc]  # the trainer builds this class
    cfg = TrainConfig(
        arch="lstm",
        embedding_size=650,
        hidden_size=650,
        num_layers=2,
        dropout=0.5,
        tied=True,
        bptt=35,
        epochs=1,
        optimizer="sgd",
        lr=20.0,
        clip=0.25,
        batch_size=20,
        amp=False,
        unigram_bias=variant in ("ours", "torchinit"),
        device=device,
        max_steps=max_steps,
        progress_bar=False,
    )
    corpus = corpus_from_splits(
        str(data / "train.txt"), str(data / "valid.txt"), None, **cfg.corpus_options()
    )
    m = train(cfg, corpus).metrics
    return {"variant": variant, "val_ppl": m["val_ppl"], "steps": m["steps"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sgd_init", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="WikiText-2: train.txt, valid.txt")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--max-steps", type=int, help="cut each run short (a smoke check)")
    p.add_argument("--variant", choices=VARIANTS, help="run this one here (internal)")
    args = p.parse_args(argv)
    if args.variant:
        print(json.dumps(one(args.variant, args.data, args.device, args.max_steps)), flush=True)
        return 0
    common = ["--data", str(args.data), "--device", args.device]
    if args.max_steps:
        common += ["--max-steps", str(args.max_steps)]
    procs = {
        v: subprocess.Popen(
            [sys.executable, "-m", "bench.sgd_init", "--variant", v, *common],
            stdout=subprocess.PIPE,
            text=True,
        )
        for v in VARIANTS
    }
    print("| variant | steps | valid ppl |\n|---|---:|---:|")
    failed = 0
    for v, proc in procs.items():
        out, _ = proc.communicate()
        if proc.returncode != 0:
            print(f"| {v} | failed (exit {proc.returncode}) | |")
            failed += 1
            continue
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| {v} | {r['steps']} | {r['val_ppl']:.1f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
