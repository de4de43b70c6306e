"""`python -m models.compare`: the three kinds, same corpus, same budget, one table.

    python -m models.compare                      # built-in corpus, 1000 steps each
    python -m models.compare --train T --valid V --test X --epochs 2 --plot val.png

Prints params, tokens/s, val/test perplexity, long-range and agreement accuracy (built-in
corpus only) and seconds for each kind; --plot writes validation perplexity by epoch (PNG).
On the built-in corpus each kind uses its recipe from models.defaults (initialisation, lr)
with one step budget for all; sizes and budget flags override it for every kind alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from models.builtin import BUILTIN_CORPORA
from models.corpus import Corpus, CorpusError, corpus_from_builtin, corpus_from_splits
from models.defaults import default_configs
from models.help_format import HelpFormatter
from models.lm import ARCHS
from models.train import TrainConfig, TrainingError, TrainResult, train
from models.train.cli import add_knob_flags
from models.train.config import knobs

BUILTIN_STEPS = 1000  # the default budget on the built-in corpus, the same for each kind

_COLUMNS = (
    ("arch", "arch", "{}"),
    ("params", "params", "{:,}"),
    ("tokens/s", "tokens_per_s", "{:,.0f}"),
    ("val ppl", "val_ppl", "{:.2f}"),
    ("test ppl", "test_ppl", "{:.2f}"),
    ("long-range", "long_range_acc", "{:.3f}"),
    ("agreement", "agreement_acc", "{:.3f}"),
    ("seconds", "train_seconds", "{:.1f}"),
)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table with the columns above; missing values show as '-'."""
    cells = [[title for title, _, _ in _COLUMNS]]
    for row in rows:
        cells.append(
            [fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in _COLUMNS]
        )
    widths = [max(len(r[i]) for r in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_history(results: dict[str, TrainResult], path: str) -> None:
    """Validation perplexity by epoch, one line per kind (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, res in results.items():
        epochs = [h["epoch"] for h in res.history]
        ax.plot(epochs, [h["val_ppl"] for h in res.history], marker="o", label=arch)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(
    corpus: Corpus, configs: dict[str, TrainConfig], log: Any = print
) -> dict[str, TrainResult]:
    """Train each kind with its config, one after the other, on the same corpus."""
    results: dict[str, TrainResult] = {}
    for arch, cfg in configs.items():
        log(f"training {arch} ...")
        results[arch] = train(cfg, corpus)
    return results


def make_configs(args: argparse.Namespace, archs: tuple[str, ...]) -> dict[str, TrainConfig]:
    """Per-kind configs: the same budget and sizes, each kind's own default recipe.

    On the built-in corpus the recipe is models.defaults' (so the long-range link can be
    learned) with one step budget for all; on files it is TrainConfig's defaults.
    """
    given = {f.name: getattr(args, f.name) for f in knobs(request_only=True)}
    given = {k: v for k, v in given.items() if v is not None}
    runtime = {"device": args.device, "num_threads": args.num_threads}
    configs = {}
    for arch in archs:
        if args.train:
            cfg = TrainConfig(arch=arch, lowercase=args.lowercase)
        else:
            cfg = replace(default_configs()[arch], max_steps=BUILTIN_STEPS)
        configs[arch] = replace(cfg, **given, **runtime)
    return configs


def main(argv: list[str] | None = None, prog: str = "python -m models.compare") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--train", help="training text; with --valid (and --test) instead of --builtin")
    p.add_argument("--valid", help="validation text (needed with --train)")
    p.add_argument("--test", help="test text, for test_ppl")
    p.add_argument("--lowercase", action="store_true", help="lowercase --train text")
    p.add_argument(
        "--builtin",
        default="longrange",
        choices=sorted(BUILTIN_CORPORA),
        help="the built-in corpus used without --train",
    )
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset")
    add_knob_flags(p, knobs(request_only=True))  # the sizes and budget a /train request sets
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where training runs"
    )
    p.add_argument("--num-threads", type=int, default=1, help="torch threads")
    p.add_argument("--plot", help="write validation ppl by epoch to this PNG")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = p.parse_args(argv)
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    try:
        if any(a not in ARCHS for a in archs) or not archs:
            raise ValueError(f"--archs must be a subset of {','.join(ARCHS)}")
        configs = make_configs(args, archs)
        options = next(iter(configs.values())).corpus_options()
        if args.train:
            if not args.valid:
                raise CorpusError("--train needs --valid")
            corpus = corpus_from_splits(args.train, args.valid, args.test, **options)
        else:
            corpus = corpus_from_builtin(args.builtin, **options)
        results = compare(corpus, configs, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, CorpusError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [{"arch": a, **r.metrics} for a, r in results.items()]
    steps = {r.metrics["steps"] for r in results.values()}
    print(f"corpus: {corpus.description}; steps: {', '.join(map(str, sorted(steps)))}")
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows))
    if args.plot:
        plot_history(results, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
