"""`python -m bench.weight_drop_cost`: what the recipe's regularisers cost a training step.

    python -m bench.weight_drop_cost [--arch lstm] [--hidden 200] [--batch 20] [--bptt 35]

Times forward + backward + AdamW step of one model three ways, interleaved round by round so
that a noisy machine slows all three alike: the plain fused module (models.lm), the recipe's
path without weight drop (locked dropout, embedding dropout, AR/TAR: one fused call per
layer) and with it (the dropped recurrent matrices too). Random ids over WikiText-2's
vocabulary size; prints the median step time of each and the ratios to the plain one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from models.lm import RNNLM, ModelConfig
from models.regularize import Regularization, train_forward

RECIPE = Regularization(
    weight_drop=0.5, embed_drop=0.1, locked_dropout=True, input_dropout=0.5, ar=2.0, tar=1.0
)
WAYS = {
    "plain fused module": Regularization(),
    "recipe without weight drop": Regularization(
        embed_drop=0.1, locked_dropout=True, input_dropout=0.5, ar=2.0, tar=1.0
    ),
    "recipe (weight drop 0.5)": RECIPE,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.weight_drop_cost")
    p.add_argument("--arch", default="lstm", choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=33_278)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = ModelConfig(
        args.arch, args.vocab, args.hidden, args.hidden, args.layers, dropout=0.4, tied=True
    )
    model = RNNLM(cfg).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.bptt + 1), generator=gen)
    ids = ids.to(args.device)
    x, y = ids[:, :-1], ids[:, 1:]
    times: dict[str, list[float]] = {name: [] for name in WAYS}

    def step(reg: Regularization) -> None:
        logits, _, penalty = train_forward(model, x, None, reg)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        (loss if penalty is None else loss + penalty).backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
        for name, reg in WAYS.items():
            start = time.perf_counter()
            step(reg)
            if round_:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain fused module"])
    shape = f"{args.arch} {args.layers} x {args.hidden}, V {args.vocab}, batch {args.batch}"
    print(f"{shape}, bptt {args.bptt}, {torch.get_num_threads()} thread(s), {args.device}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {1000 * med:8.1f} ms/step  {med / base:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
