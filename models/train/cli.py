"""`python -m models.train`: train one model and save it as a new version in the store.

With --builtin the recipe of the embedded defaults (models.defaults) is the starting point, so
`--arch gru --builtin` trains the default GRU again; `--recipe NAME` lays a named recipe's
settings (models.recipes, docs/recipes.md) over that; flags override single settings.
Progress goes to stderr (a tqdm bar); the last line on stdout is a JSON summary
{"name", "version", "metrics", "seconds"}. Ctrl-C (or SIGTERM) stops after the current step;
with --checkpoint-dir a checkpoint is written first and the same command resumes from it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import Field, replace
from typing import Any

from models import store
from models.builtin import BUILTIN_CORPORA
from models.corpus import (
    Corpus,
    CorpusError,
    corpus_from_builtin,
    corpus_from_path,
    corpus_from_splits,
)
from models.defaults import default_configs
from models.help_format import HelpFormatter
from models.json_values import json_safe
from models.lm import ARCHS
from models.recipes import RECIPES, recipe_settings
from models.train.config import (
    OPTIMIZERS,
    STOP_CANCEL,
    STOP_CHECKPOINT,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    build_meta,
    knob_type,
    knobs,
)
from models.train.loop import train


def _config(args: argparse.Namespace) -> TrainConfig:
    base = default_configs()[args.arch] if args.builtin else TrainConfig(arch=args.arch)
    if args.recipe:
        base = replace(base, **recipe_settings(args.recipe, args.arch))
    given = {f.name: getattr(args, f.name) for f in knobs() if getattr(args, f.name) is not None}
    if args.optimizer:
        # Another optimizer needs its own lr and clip unless they are given too.
        given = {"lr": None, "clip": None, **given, "optimizer": args.optimizer}
    return replace(
        base,
        **given,
        lowercase=args.lowercase or base.lowercase or bool(args.builtin),
        device=args.device,
        amp=not args.no_amp,
        progress_bar=args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty()),
        progress_interval_s=0.5,
        checkpoint_interval_s=TrainConfig.checkpoint_interval_s,
    )


def _parser(prog: str = "python -m models.train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--arch", required=True, choices=ARCHS, help="the kind of recurrent cell")
    src = p.add_argument_group("corpus (--train [--valid [--test]] or --builtin)")
    src.add_argument("--train", help="training text: a file or a directory of .txt files")
    src.add_argument("--valid", help="validation text (default: hold out --valid-fraction)")
    src.add_argument("--test", help="test text, for test_ppl")
    src.add_argument(
        "--valid-fraction",
        type=float,
        default=0.1,
        help="share of --train held out for validation when there is no --valid",
    )
    src.add_argument(
        "--builtin",
        nargs="?",
        const="longrange",
        choices=sorted(BUILTIN_CORPORA),
        help="use a built-in corpus (default: longrange)",
    )
    src.add_argument(
        "--builtin-seed", type=int, default=0, help="seed of the generated built-in corpus"
    )
    p.add_argument("--model-dir", required=True, help="the model store to save the new version in")
    p.add_argument("--name", required=True, help="the model's name in the store (no @version)")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        help="start from a named recipe's settings (models.recipes, docs/recipes.md)",
    )
    # Unset flags keep the recipe: --recipe's, then models.defaults' for --builtin,
    # TrainConfig's otherwise.
    add_knob_flags(p, knobs())
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="optimizer (default: the recipe's; another one takes its own lr and clip)",
    )
    p.add_argument("--lowercase", action="store_true", help="lowercase the corpus")
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where training runs"
    )
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--checkpoint-dir", help="resumable checkpoints here (resumes if present)")
    p.add_argument(
        "--progress",
        choices=["auto", "bar", "none"],
        default="auto",
        help="progress bar on stderr (auto: when it is a terminal)",
    )
    return p


def add_knob_flags(p: argparse.ArgumentParser, declared: list[Field[Any]]) -> None:
    """One `--flag` per hyperparameter, default None (not given); booleans have `--no-X`."""
    for f in declared:
        flag, kind, text = "--" + f.name.replace("_", "-"), knob_type(f), f.metadata["help"]
        # The flag itself defaults to "not given"; what that means is the recipe's value.
        base = "the recipe's" if f.default is None else f"{f.default}, or the built-in recipe's"
        text += f" (default: {base})".replace("%", "%%")
        if kind is bool:
            # --X and --no-X: a recipe that turns a switch on can be overridden off.
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            p.add_argument(flag, type=kind, default=None, help=text)


def _load_corpus(args: argparse.Namespace, cfg: TrainConfig) -> Corpus:
    if args.builtin:
        if args.train or args.valid or args.test:
            raise CorpusError("give either --builtin or --train/--valid/--test, not both")
        return corpus_from_builtin(args.builtin, args.builtin_seed, **cfg.corpus_options())
    if not args.train:
        raise CorpusError("a corpus is needed: --train PATH [--valid PATH] or --builtin")
    if args.valid:
        return corpus_from_splits(args.train, args.valid, args.test, **cfg.corpus_options())
    if args.test:
        raise CorpusError("--test needs --valid as well")
    return corpus_from_path(args.train, valid_fraction=args.valid_fraction, **cfg.corpus_options())


def main(argv: list[str] | None = None, prog: str = "python -m models.train") -> int:
    args = _parser(prog).parse_args(argv)
    start = time.monotonic()
    try:
        # Fail on a bad name before training, not after; a version is the store's to pick.
        if store.parse_ref(args.name)[1] is not None:
            raise ValueError(f"--name {args.name!r}: give a name, not name@version")
        cfg = _config(args)
        corpus = _load_corpus(args, cfg)
    except (ValueError, CorpusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    stop_request: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        stop_request.append(STOP_CHECKPOINT if args.checkpoint_dir else STOP_CANCEL)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"corpus: {corpus.description}, {len(corpus.tokenizer.vocab)} words", file=sys.stderr)
        result = train(
            cfg,
            corpus,
            should_stop=lambda: stop_request[0] if stop_request else None,
            checkpoint_dir=args.checkpoint_dir,
        )
    except TrainingCancelled as e:
        where = f"; resume with the same command ({args.checkpoint_dir})" if e.checkpointed else ""
        print(f"stopped: {e}{where}", file=sys.stderr)
        return 130
    except TrainingError as e:
        print(f"error: training failed: {e}", file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

    version = store.save_version(
        args.model_dir, args.name, result.model, result.tokenizer, build_meta(result, corpus)
    )
    summary = {
        "name": args.name,
        "version": version,
        "metrics": result.metrics,
        "seconds": round(time.monotonic() - start, 3),
    }
    print(json.dumps(json_safe(summary), sort_keys=False))
    return 0
