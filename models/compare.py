"""`python -m models.compare`: the three kinds, same corpus, same budget, one table.

    python -m models.compare                      # built-in corpus, 1000 steps each
    python -m models.compare --train T --valid V --test X --epochs 2 --plot val.png
    python -m models.compare --data wikitext-2 --budget-s 300 --report docs/comparison.md

Prints params, tokens/s, val/test perplexity, long-range and agreement accuracy (built-in
corpus only) and seconds for each kind; --plot writes validation perplexity by epoch (PNG).
On the built-in corpus each kind uses its recipe from models.defaults (initialisation, lr)
with one step budget for all; sizes and budget flags override it for every kind alike.

Each kind gets its own hidden width so that all hold as many parameters as the LSTM at
--hidden-size (models.compare_sizes; --match). --data DIR reads DIR/{train,valid,test}.txt;
--train-tokens / --valid-tokens keep the first N tokens of a split (the vocabulary stays the
full split's). --budget-s gives each kind about that many seconds of training: a few timed
steps turn it into a step count, so the run itself is deterministic. --report writes the
page (models.compare_report) with the kernel timings (models.compare_speed) and, on files,
long-range accuracy by gap from a second run of the three kinds on the built-in corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any

import torch

from models.builtin import BUILTIN_CORPORA
from models.compare_report import write_report
from models.compare_sizes import MATCHES, Size, matched_sizes
from models.compare_speed import measure
from models.corpus import Corpus, CorpusError, corpus_from_builtin, corpus_from_splits
from models.defaults import default_configs
from models.device import describe_machine
from models.help_format import HelpFormatter
from models.lm import ARCHS
from models.train import TrainConfig, TrainingError, TrainResult, train
from models.train.cli import add_knob_flags
from models.train.config import knobs
from models.train.loop import Trainer

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


def make_configs(
    args: argparse.Namespace, archs: tuple[str, ...], builtin: bool
) -> dict[str, TrainConfig]:
    """Per-kind configs: the same budget, each kind's own default recipe and matched width.

    On the built-in corpus the recipe is models.defaults' (so the long-range link can be
    learned) with one step budget for all; on files it is TrainConfig's defaults.
    """
    given = {f.name: getattr(args, f.name) for f in knobs(request_only=True)}
    given = {k: v for k, v in given.items() if v is not None}
    runtime = {"device": args.device, "num_threads": args.num_threads}
    configs = {}
    for arch in archs:
        if builtin:
            cfg = replace(default_configs()[arch], max_steps=BUILTIN_STEPS)
        else:
            cfg = TrainConfig(arch=arch, lowercase=args.lowercase)
        configs[arch] = replace(cfg, **given, **runtime)
    return configs


def match_widths(
    configs: dict[str, TrainConfig], vocab: int, match: str
) -> tuple[dict[str, TrainConfig], dict[str, Size]]:
    """Give each kind the width at which it holds as many parameters as the LSTM would at
    the configs' hidden size (the first kind's config stands for all)."""
    base = next(iter(configs.values()))
    sizes = matched_sizes(
        tuple(configs),
        "lstm",
        vocab,
        base.embedding_size,
        base.hidden_size,
        base.num_layers,
        base.tied,
        match,
    )
    widened = {
        a: replace(c, hidden_size=sizes[a].hidden_size, embedding_size=sizes[a].embedding_size)
        for a, c in configs.items()
    }
    return widened, sizes


def budget_steps(cfg: TrainConfig, corpus: Corpus, budget_s: float, probe: int = 5) -> int:
    """Steps that take about `budget_s` seconds: times `probe` steps after a warm-up one."""
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        trainer = Trainer(replace(cfg, progress_bar=False), corpus, None, None, None)
        trainer._train_step()
        start = time.perf_counter()
        for _ in range(probe):
            trainer._train_step()
        per_step = (time.perf_counter() - start) / probe
    finally:
        torch.set_num_threads(threads)
    return max(1, int(budget_s / per_step))


def load_corpus(args: argparse.Namespace, options: dict[str, Any]) -> Corpus:
    if args.data:
        paths = [os.path.join(args.data, f"{s}.txt") for s in ("train", "valid", "test")]
        test = paths[2] if os.path.exists(paths[2]) else None
        corpus = corpus_from_splits(paths[0], paths[1], test, **options)
    elif args.train:
        if not args.valid:
            raise CorpusError("--train needs --valid")
        corpus = corpus_from_splits(args.train, args.valid, args.test, **options)
    else:
        return corpus_from_builtin(args.builtin, **options)
    # Slices keep the full split's vocabulary, so the softmax is as wide as the whole run's.
    keep = {"train": args.train_tokens, "valid": args.valid_tokens, "test": args.valid_tokens}
    cut = {
        k: getattr(corpus, k)[:n] for k, n in keep.items() if n and getattr(corpus, k) is not None
    }
    return replace(corpus, **cut) if cut else corpus


def report_rows(
    results: dict[str, TrainResult], longrange: dict[str, TrainResult], bptt: int
) -> list[dict[str, Any]]:
    """The rows of the page: training metrics, kernel speed and long-range accuracy."""
    speed = measure({a: r.model for a, r in results.items()}, bptt=bptt)
    rows = []
    for arch, res in results.items():
        row = {"arch": arch, **res.metrics, **speed[arch], "history": res.history}
        if arch in longrange:
            m = longrange[arch].metrics
            row["long_range_acc"] = m.get("long_range_acc")
            row["long_range_by_gap"] = m.get("long_range_acc_by_gap")
        rows.append(row)
    return rows


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--data", help="a directory with train.txt, valid.txt (and test.txt)")
    p.add_argument("--train", help="training text; with --valid (and --test) instead of --builtin")
    p.add_argument("--valid", help="validation text (needed with --train)")
    p.add_argument("--test", help="test text, for test_ppl")
    p.add_argument("--lowercase", action="store_true", help="lowercase --train text")
    p.add_argument(
        "--builtin",
        default="longrange",
        choices=sorted(BUILTIN_CORPORA),
        help="the built-in corpus used without --train or --data",
    )
    p.add_argument("--train-tokens", type=int, help="train on the first N tokens only")
    p.add_argument("--valid-tokens", type=int, help="validate and test on the first N only")
    p.add_argument("--archs", default=",".join(ARCHS), help="comma-separated subset")
    add_knob_flags(p, knobs(request_only=True))  # the sizes and budget a /train request sets
    p.add_argument("--budget-s", type=float, help="about this many training seconds per kind")
    p.add_argument(
        "--match",
        default="recurrent",
        choices=MATCHES,
        help="which parameters the widths equalise (models.compare_sizes)",
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where training runs"
    )
    p.add_argument("--num-threads", type=int, default=1, help="torch threads")
    p.add_argument("--plot", help="write validation ppl by epoch to this PNG")
    p.add_argument("--report", help="write the markdown page (and its PNGs beside it) here")
    p.add_argument(
        "--longrange-steps",
        type=int,
        default=BUILTIN_STEPS,
        help="with --report on files: steps per kind of the built-in long-range run (0: none)",
    )
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    return p


def _run(
    args: argparse.Namespace, archs: tuple[str, ...], builtin: bool, log: Any
) -> tuple[Corpus, dict[str, TrainResult], dict[str, Size]]:
    configs = make_configs(args, archs, builtin)
    corpus = load_corpus(args, next(iter(configs.values())).corpus_options())
    configs, sizes = match_widths(configs, len(corpus.tokenizer.vocab), args.match)
    if args.budget_s:
        for arch, cfg in configs.items():
            steps = budget_steps(cfg, corpus, args.budget_s)
            # The budget decides, not validation: every kind trains for its full time.
            configs[arch] = replace(cfg, max_steps=steps, epochs=10_000, early_stop=0)
            log(f"{arch}: hidden {cfg.hidden_size}, {steps} steps for {args.budget_s:g}s")
    return corpus, compare(corpus, configs, log=log), sizes


def main(argv: list[str] | None = None, prog: str = "python -m models.compare") -> int:
    args = _parser(prog).parse_args(argv)
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    files = bool(args.data or args.train)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    try:
        if any(a not in ARCHS for a in archs) or not archs:
            raise ValueError(f"--archs must be a subset of {','.join(ARCHS)}")
        if args.budget_s is not None and args.budget_s <= 0:
            raise ValueError("--budget-s must be > 0")
        start = time.monotonic()
        corpus, results, sizes = _run(args, archs, not files, log)
        longrange: dict[str, TrainResult] = {}
        if args.report and files and args.longrange_steps:
            log("long-range accuracy: the same kinds on the built-in corpus ...")
            # The defaults' recipe and sizes (models.defaults), matched the same way.
            plain = {f.name: None for f in knobs(request_only=True)}
            lr_args = argparse.Namespace(
                **{**vars(args), **plain, "data": None, "train": None, "budget_s": None}
            )
            lr_args.max_steps = args.longrange_steps
            _, longrange, _ = _run(lr_args, archs, True, log)
        elif args.report:
            longrange = results
    except (ValueError, CorpusError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [{"arch": a, "hidden": sizes[a].hidden_size, **r.metrics} for a, r in results.items()]
    steps = {r.metrics["steps"] for r in results.values()}
    print(f"corpus: {corpus.description}; steps: {', '.join(map(str, sorted(steps)))}")
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows))
    if args.plot:
        plot_history(results, args.plot)
        print(f"plot: {args.plot}")
    if args.report:
        first_run = next(iter(results.values()))
        first, device = first_run.config, first_run.model.decoder.weight.device
        reference = make_configs(args, ("lstm",), not files)["lstm"].hidden_size
        setup = {
            "command": " ".join([prog, *(argv if argv is not None else sys.argv[1:])]),
            "corpus": f"{corpus.description}: {corpus.train.numel():,} training tokens, "
            f"{corpus.valid.numel():,} validation tokens, {len(corpus.tokenizer.vocab):,} words",
            "training": f"{first.num_layers} layers, batch {first.batch_size}, bptt "
            f"{first.bptt}, {first.optimizer} lr {first.effective_lr:g}, "
            f"dropout {first.dropout:g}, "
            f"{torch.get_num_threads() if not args.num_threads else args.num_threads} "
            "torch thread(s)",
            "device": device.type,
            "machine": describe_machine(device),
            "matched": f"{args.match} parameters, to the LSTM at hidden {reference}",
            "wall time": f"{time.monotonic() - start:.0f} s",
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
        }
        rows = report_rows(results, longrange, first.bptt)
        write_report(args.report, rows, sizes, setup, first.batch_size * first.bptt)
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
