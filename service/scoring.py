"""Scoring a given text: log P(word t | words before t) at every position, in one pass.

A score row goes through the same dynamic batcher as a `Step` (the batch function tells them
apart), so concurrent `/score` requests, and the prompts of `/v1/completions` with `echo`,
share one recurrent pass over right-padded ids. The recurrence is causal, so padding after a
row's last token changes none of its positions. The decoder then runs over the real positions
only, in chunks, so a batch of long texts over a large vocabulary never holds a full
[B, T, V] logits tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from models.lm import RNNLM

from .steps import padded_ids

# Logits held at once while decoding: 16M floats (64 MiB) whatever the vocabulary.
_LOGITS_PER_CHUNK = 1 << 24


@dataclass(slots=True)
class ScoreRow:
    ids: Sequence[int]  # at least one token
    top_k: int = 0  # alternatives to report at each position


@dataclass(slots=True)
class ScoreResult:
    # Entry t is about ids[t + 1]: len(ids) - 1 entries (the first word has no context).
    logprobs: list[float]
    top_ids: list[list[int]] = field(default_factory=list)  # [] when top_k is 0
    top_logprobs: list[list[float]] = field(default_factory=list)


def run_scores(model: RNNLM, rows: Sequence[ScoreRow]) -> list[ScoreResult]:
    """Score every row in one recurrent pass; result i belongs to rows[i].

    Call on the inference thread only: this is the torch work.
    """
    if not rows:
        return []
    device = model.decoder.weight.device
    vocab = model.cfg.vocab_size
    k = min(max(r.top_k for r in rows), vocab)
    with torch.inference_mode():
        ids, lengths = padded_ids([r.ids for r in rows], device)
        width = ids.shape[1]
        out, _ = model.rnn(model.drop(model.embedding(ids)))  # [B, T, H]
        # Position t predicts token t + 1; a row's positions past its last-but-one are padding.
        wanted = torch.tensor([n - 1 for n in lengths], device=device)
        mask = torch.arange(width - 1, device=device).unsqueeze(0) < wanted.unsqueeze(1)
        states = model.drop(out[:, :-1][mask])  # [P, H], row by row
        targets = ids[:, 1:][mask]
        chunk = max(1, _LOGITS_PER_CHUNK // vocab)
        picked, top_vals, top_idx = [], [], []
        for start in range(0, states.shape[0], chunk):
            logits = model.decode(states[start : start + chunk]).float()
            norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            target = targets[start : start + chunk].unsqueeze(1)
            picked.append((logits.gather(1, target) - norm).squeeze(1))
            if k > 0:
                vals, idx = torch.topk(logits, k, dim=-1)
                top_vals.append(vals - norm)
                top_idx.append(idx)
        flat = torch.cat(picked).tolist() if picked else []
        flat_vals = torch.cat(top_vals).tolist() if top_vals else []
        flat_idx = torch.cat(top_idx).tolist() if top_idx else []

    results: list[ScoreResult] = []
    start = 0
    for row, n in zip(rows, lengths, strict=True):
        end = start + n - 1
        result = ScoreResult(logprobs=flat[start:end])
        if row.top_k > 0:
            m = min(row.top_k, k)
            result.top_ids = [r[:m] for r in flat_idx[start:end]]
            result.top_logprobs = [r[:m] for r in flat_vals[start:end]]
        results.append(result)
        start = end
    return results
