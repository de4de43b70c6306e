"""Perplexity and the built-in corpus's long-range and agreement accuracies; CLI.

Perplexity uses the standard accounting: every token of the split after the first is a target,
`<eos>` included (one per line), i.e. exp(total NLL / (N - 1)).

    python -m models.evaluate --model-dir DIR --name NAME[@VERSION] --data PATH
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from models.builtin import AgreementExample, LongRangeExample
from models.corpus import Corpus
from models.device import resolve_device
from models.help_format import HelpFormatter
from models.lm import RNNLM
from models.tokenizer import Tokenizer

# Logits held at once while evaluating: bounds memory for large vocabularies.
_MAX_LOGITS = 1 << 22


def _rows(ids: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split a stream into `batch_size` contiguous rows so every target is counted once.

    Returns inputs, targets and a mask, each [B, L]; the last rows are padded.
    """
    n = ids.numel() - 1
    rows = max(1, min(batch_size, n))
    length = math.ceil(n / rows)
    x = torch.zeros(rows, length, dtype=torch.int64)
    y = torch.zeros(rows, length, dtype=torch.int64)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for b in range(rows):
        start = b * length
        k = max(0, min(length, n - start))
        x[b, :k] = ids[start : start + k]
        y[b, :k] = ids[start + 1 : start + 1 + k]
        mask[b, :k] = True
    return x, y, mask


@torch.no_grad()
def nll_sum(
    model: RNNLM,
    ids: Tensor,
    batch_size: int = 10,
    bptt: int = 64,
    poll: Callable[[], Any] | None = None,
) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of `ids[1:]` given the prefix, and the count.

    `poll` is called between chunks; it may raise to abort a long evaluation.
    """
    if ids.numel() < 2:
        raise ValueError("need at least 2 tokens to measure perplexity")
    was_training = model.training
    model.eval()
    device = model.decoder.weight.device
    x, y, mask = _rows(ids.to("cpu"), batch_size)
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    chunk = max(1, min(bptt, _MAX_LOGITS // (x.shape[0] * model.cfg.vocab_size)))
    total = torch.zeros((), dtype=torch.float64, device=device)
    hidden = None
    try:
        for t in range(0, x.shape[1], chunk):
            if poll is not None:
                poll()
            logits, hidden = model(x[:, t : t + chunk], hidden)
            nll = F.cross_entropy(
                logits.float().flatten(0, 1), y[:, t : t + chunk].flatten(), reduction="none"
            )
            total += (nll * mask[:, t : t + chunk].flatten()).sum(dtype=torch.float64)
    finally:
        model.train(was_training)
    return float(total), int(mask.sum())


def perplexity(model: RNNLM, ids: Tensor, batch_size: int = 10, bptt: int = 64) -> float:
    total, count = nll_sum(model, ids, batch_size, bptt)
    return math.exp(min(total / count, 700.0))  # 700: exp() overflows beyond ~709


@torch.no_grad()
def next_word_probs(model: RNNLM, tokenizer: Tokenizer, prefixes: Sequence[str]) -> Tensor:
    """Next-word distributions [len(prefixes), V] after each prefix, from a zero state."""
    was_training = model.training
    model.eval()
    device = model.decoder.weight.device
    encoded = [tokenizer.encode(p).ids or [tokenizer.vocab.eos_id] for p in prefixes]
    out = []
    try:
        for i in range(0, len(encoded), 64):
            group = encoded[i : i + 64]
            lengths = torch.tensor([len(e) for e in group])
            ids = torch.zeros(len(group), int(lengths.max()), dtype=torch.int64)
            for r, e in enumerate(group):
                ids[r, : len(e)] = torch.tensor(e)
            logits, _ = model.forward_last(ids.to(device), lengths.to(device))
            out.append(torch.softmax(logits.float(), dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, len(tokenizer.vocab))


def long_range_accuracy(
    model: RNNLM, tokenizer: Tokenizer, examples: Sequence[LongRangeExample]
) -> dict[str, Any]:
    """Top-1 accuracy on the long-range targets, overall and by gap (number of fillers)."""
    probs = next_word_probs(model, tokenizer, [ex.prefix for ex in examples])
    top1 = probs.argmax(dim=-1).tolist()
    hits: dict[int, list[bool]] = defaultdict(list)
    for ex, pred in zip(examples, top1, strict=True):
        hits[ex.gap].append(tokenizer.vocab.itos[pred] == ex.target)
    every = [h for hs in hits.values() for h in hs]
    return {
        "long_range_acc": sum(every) / len(every) if every else 0.0,
        "long_range_acc_by_gap": {str(g): sum(h) / len(h) for g, h in sorted(hits.items())},
    }


def answer_margins(
    model: RNNLM, tokenizer: Tokenizer, cases: Sequence[tuple[str, str]]
) -> tuple[Tensor, Tensor]:
    """For (prefix, answer) cases: the answer's probability and the best other word's."""
    probs = next_word_probs(model, tokenizer, [prefix for prefix, _ in cases])
    answer = torch.tensor([tokenizer.vocab.stoi.get(word, 0) for _, word in cases])[:, None]
    return probs.gather(1, answer)[:, 0], probs.scatter(1, answer, 0.0).max(dim=1).values


def agreement_accuracy(
    model: RNNLM, tokenizer: Tokenizer, examples: Sequence[AgreementExample]
) -> dict[str, Any]:
    """How often the correct verb form is more probable than the wrong one."""
    probs = next_word_probs(model, tokenizer, [ex.prefix for ex in examples])
    stoi = tokenizer.vocab.stoi
    right = [
        bool(p[stoi.get(ex.correct, 0)] > p[stoi.get(ex.wrong, 0)])
        for ex, p in zip(examples, probs, strict=True)
    ]
    hard = [r for r, ex in zip(right, examples, strict=True) if ex.attractor]
    return {
        "agreement_acc": sum(right) / len(right) if right else 0.0,
        "agreement_acc_attractor": sum(hard) / len(hard) if hard else 0.0,
    }


class EvalSettings(Protocol):
    """What `final_metrics` reads of a training config."""

    eval_batch_size: int
    bptt: int


def final_metrics(
    model: RNNLM, corpus: Corpus, cfg: EvalSettings, val_ppl: float | None = None
) -> dict[str, Any]:
    """Validation/test perplexity and, for the built-in corpus, the long-range accuracies.

    `val_ppl`, when the caller already measured it on this very model, saves a pass.
    """
    out: dict[str, Any] = {}
    if val_ppl is None or not math.isfinite(val_ppl):
        val_ppl = perplexity(model, corpus.valid, cfg.eval_batch_size, cfg.bptt)
    out["val_ppl"] = val_ppl
    if corpus.test is not None:
        out["test_ppl"] = perplexity(model, corpus.test, cfg.eval_batch_size, cfg.bptt)
    if corpus.builtin is not None:
        out.update(long_range_accuracy(model, corpus.tokenizer, corpus.builtin.long_range))
        out.update(agreement_accuracy(model, corpus.tokenizer, corpus.builtin.agreement))
    return out


def main(argv: list[str] | None = None, prog: str = "python -m models.evaluate") -> int:
    from models import store
    from models.corpus import CorpusError, encode_path

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model-dir", required=True, help="the model store")
    p.add_argument("--name", required=True, help="NAME or NAME@VERSION (default: the newest)")
    p.add_argument("--data", required=True, help="a text file or a directory of .txt files")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="where it runs")
    p.add_argument(
        "--batch-size", type=int, default=10, help="parallel streams the text is cut into"
    )
    args = p.parse_args(argv)
    try:
        device = str(resolve_device(args.device))
        name, version = store.parse_ref(args.name)
        loaded = store.load_version(args.model_dir, name, version, device=device)
        ids = encode_path(args.data, loaded.tokenizer)
        total, count = nll_sum(loaded.model, ids, batch_size=args.batch_size)
    except (ValueError, RuntimeError, CorpusError, store.StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {
        "name": name,
        "version": loaded.version,
        "data": args.data,
        "tokens": count,
        "nll": total / count,
        "ppl": math.exp(min(total / count, 700.0)),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
