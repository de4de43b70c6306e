"""Choosing generation's next word from one row's logits, on the inference thread.

A `Picker` is the `pick` of a generation's `Step`: greedy, or sampled with temperature, top-k
and nucleus (top-p) truncation from its own seeded generator. It also notes the chosen word's
log-probability under the model's own distribution (temperature 1, nothing truncated, the
number `/predict` reports), because a sampled word may fall outside any top-k sent back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Picker:
    def __init__(
        self,
        unk_id: int,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.unk_id = unk_id
        self.sample = bool(temperature)
        self.temperature = temperature or 1.0
        self.top_k = top_k
        self.top_p = top_p
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.last_logprob = 0.0  # of the word chosen last; one generation calls it in turn

    def __call__(self, logits: Tensor) -> int:
        row = logits.float()
        choice = self._choose(row)
        self.last_logprob = float(row[choice] - torch.logsumexp(row, dim=-1))
        return choice

    def _choose(self, row: Tensor) -> int:
        scores = row.clone()
        scores[self.unk_id] = -math.inf  # "<unk>" stands for any rare word: never one to write
        if not self.sample:
            return int(scores.argmax())
        scores = scores / self.temperature
        if self.top_k is not None and self.top_k < scores.numel():
            kth = torch.topk(scores, self.top_k).values[-1]
            scores[scores < kth] = -math.inf
        probs = torch.softmax(scores, dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            # Keep the smallest head whose mass reaches top_p: a word stays when the mass
            # before it is still short of top_p (so the likeliest word always stays).
            drop = (torch.cumsum(ordered, dim=0) - ordered) >= self.top_p
            drop[0] = False  # a top_p below float32's smallest number would drop them all
            probs = probs.scatter(0, order[drop], 0.0)
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))
