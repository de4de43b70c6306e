"""The embedded default models: `rnn`, `lstm` and `gru` trained on the built-in corpus.

A fixed step budget (not wall-clock) keeps the result deterministic. Two worker threads train
at once (lstm on one, gru then rnn on the other), each torch op single-threaded: these models
are too small for intra-op threads to pay off (on a busy 2-core machine two intra-op threads
made training ~5x slower in CPU time), while two independent trainings use both cores fully.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from models import store
from models.builtin import check_prompts, promise_prompts
from models.corpus import Corpus, corpus_from_builtin
from models.evaluate import answer_margins
from models.lm import RNNLM
from models.tokenizer import Tokenizer
from models.train import HeldOutCheck, TrainConfig, TrainResult, build_meta, train

DEFAULT_CORPUS = "longrange"
DEFAULT_SEED = 0
DEFAULT_NAMES = ("rnn", "lstm", "gru")
# The gated models promise the long-range link; the plain RNN is there to show it fail.
_CHECKED = ("lstm", "gru")
# Which models share a worker thread, in order; the lists are balanced by measured cost.
_WORKERS = (("lstm",), ("gru", "rnn"))
# The bar the long-range check holds LSTM and GRU to: stricter than the promise the tests check
# (the language first with p > 0.5 and 3x the runner-up), so a margin is left.
CHECK_MIN_PROB = 0.6
CHECK_MIN_RATIO = 4.0
# Steps a run may add at its final lr when no epoch has met the bar yet (about 8 s on one core).
CHECK_EXTRA_STEPS = 300


def default_configs() -> dict[str, TrainConfig]:
    """The training recipe of each default model."""
    common: dict[str, Any] = dict(
        embedding_size=64,
        hidden_size=128,
        batch_size=32,
        bptt=70,  # most stories (country ... language) fit in one window
        optimizer="adam",
        lr=1e-2,
        clip=5.0,
        epochs=1000,  # the step budget decides
        early_stop=0,
        seed=DEFAULT_SEED,
        device="cpu",
        lowercase=True,
        progress_interval_s=3.0,
        checkpoint_interval_s=1e9,
    )
    # Hold the lr, then anneal over the last 40%: the link is found at the full lr, the
    # annealing then firms up the margins. LSTM and GRU keep the epoch the held-out check
    # chose (long_range_check); the RNN keeps its last: validation perplexity barely moves
    # once the link is learned, so "best" by validation would pick by noise.
    schedule = dict(schedule="cosine", decay_start=0.6, min_lr_ratio=0.1, keep_best=False)
    return {
        "rnn": TrainConfig(arch="rnn", max_steps=200, **{**common, **schedule, "lr": 3e-3}),
        "lstm": TrainConfig(arch="lstm", max_steps=1200, **common, **schedule),
        # Update gate leaning further to "keep": with models.lm's 1.0 a GRU found the link in
        # some seeds only within 700 steps, with 2.5 in every seed tried (0-3).
        "gru": TrainConfig(arch="gru", max_steps=850, gate_bias=2.5, **common, **schedule),
    }


def long_range_check(tokenizer: Tokenizer) -> HeldOutCheck:
    """Keep the epoch whose worst long-range prompt clears the bar by the most.

    The prompts are the promised ones (`promise_prompts`, what the README and the tests hold
    the defaults to) and as many again that the promise never names (`check_prompts`): a
    default is shipped only once it keeps its own promise, and the held-out half keeps the
    choice from settling on an epoch that is right on those prompts alone. The score is the
    worst prompt's margin over the bar, as a ratio: >= 1 means every prompt puts the right
    language first with p >= CHECK_MIN_PROB and CHECK_MIN_RATIO times the runner-up.

    The LSTM needs it. On this corpus its worst prompt swings across the bar from one epoch
    to the next, even at the final learning rate, and one failing prompt in a thousand is
    normal; which epoch comes last, and so what an unchecked run ships, depends on the
    CPU's kernels (AVX2, AVX-512 and the plain ones each ended somewhere else).
    """
    cases = promise_prompts() + check_prompts()

    def score(model: RNNLM) -> float:
        answer, other = answer_margins(model, tokenizer, cases)
        margin = torch.minimum(answer / CHECK_MIN_PROB, answer / (other * CHECK_MIN_RATIO))
        return float(margin.min())

    return HeldOutCheck(score, start=0.5, extra_steps=CHECK_EXTRA_STEPS)


def _progress_logger(name: str, log: Callable[[str], Any]) -> Callable[[dict[str, Any]], None]:
    def report(p: dict[str, Any]) -> None:
        if p["event"] == "step":
            log(
                f"[{name}] step {p['step']}/{p['total_steps']} loss {p['loss']:.3f} "
                f"{p['tokens_per_s']:,.0f} tok/s, eta {p['eta_s']:.0f}s"
            )

    return report


def train_defaults(
    model_dir: str | os.PathLike[str],
    log: Callable[[str], Any] = print,
    should_stop: Callable[[], Any] | None = None,
) -> list[tuple[str, int]]:
    """Train and save `rnn`, `lstm` and `gru`; returns [(name, version), ...] in that order.

    Each model is saved as soon as it is trained, so a server can start serving the first
    one early. `should_stop` is passed to train() (see models.train for the protocol).
    """
    start = time.monotonic()
    corpus = corpus_from_builtin(DEFAULT_CORPUS, DEFAULT_SEED, lowercase=True)
    log(
        f"training default models {', '.join(DEFAULT_NAMES)} on {corpus.description} "
        f"({corpus.train.numel():,} tokens, {len(corpus.tokenizer.vocab)} words)"
    )
    configs = default_configs()
    versions: dict[str, int] = {}
    lock = threading.Lock()

    def run_worker(names: tuple[str, ...]) -> None:
        for name in names:
            check = long_range_check(corpus.tokenizer) if name in _CHECKED else None
            report = _progress_logger(name, log)
            res = train(configs[name], corpus, report, should_stop, check=check)
            version = _save(model_dir, name, res, corpus)
            with lock:
                versions[name] = version
            m = res.metrics
            log(
                f"[{name}] saved version {version}: val ppl {m['val_ppl']:.3f}, "
                f"long-range acc {m['long_range_acc']:.2f}, "
                f"agreement acc {m['agreement_acc']:.2f}, {m['train_seconds']:.1f}s"
                + (f", check {m['check_score']:.2f}" if "check_score" in m else "")
                + f" after {m['steps']} steps"
            )

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(_WORKERS), thread_name_prefix="gatehouse-defaults") as pool:
            futures = [pool.submit(run_worker, names) for names in _WORKERS]
            for f in futures:
                f.result()  # re-raises a worker's error here
    finally:
        torch.set_num_threads(threads_before)
    log(f"default models ready in {time.monotonic() - start:.1f}s")
    return [(name, versions[name]) for name in DEFAULT_NAMES]


def _save(model_dir: str | os.PathLike[str], name: str, res: TrainResult, corpus: Corpus) -> int:
    meta = build_meta(res, corpus)
    meta["default_model"] = True
    return store.save_version(model_dir, name, res.model.cpu(), res.tokenizer, meta)
