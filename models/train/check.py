"""A held-out check that chooses which weights a run keeps, and may let it run a little longer.

Validation perplexity says how well a model predicts text on average; a promise about a few
hard cases (a language named across four filler sentences) can flip between two epochs whose
perplexities agree to three digits. Small models trained on a tiny corpus are like that: the
same seed ends on either side of the promise depending on the last bits of the CPU kernels.
A check scores such a promise directly, so the run keeps an epoch that meets it instead of
whichever epoch came last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.lm import RNNLM


@dataclass(frozen=True)
class HeldOutCheck:
    """`score(model)`: higher is better, >= 1.0 means the model meets its bar.

    From `start` (a fraction of the planned steps) the loop scores the weights at every epoch
    end and keeps the best-scoring ones, in place of `keep_best`'s choice by validation. When
    the planned steps end before any epoch reached 1.0, training goes on at the schedule's
    final learning rate, one epoch at a time, until one does or `extra_steps` more steps ran.
    """

    score: Callable[[RNNLM], float]
    start: float = 0.5
    extra_steps: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= 1.0 or self.extra_steps < 0:
            raise ValueError("start must be in [0, 1] and extra_steps >= 0")

    def evaluate(self, model: RNNLM) -> float:
        """The score of `model` as it is now, in eval mode; its training mode is restored."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(self.score(model))
        finally:
            model.train(was_training)
