"""NT-ASGD's iterate average: the running mean of the weights from the step averaging began.

The `ntasgd` optimizer is plain SGD until validation stops improving (non-monotonically: worse
than the best of all but the last `asgd_nonmono` epochs); from then on every step also updates
this average, validation scores the averaged weights, and they are what the run keeps and
saves. The average is tensors plus a count, so a checkpoint stores it as tensors (prefix
`average.`) and one JSON number: nothing pickled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

PREFIX = "average."


class IterateAverage:
    def __init__(self) -> None:
        self.mean: dict[str, Tensor] | None = None
        self.count = 0

    @property
    def active(self) -> bool:
        return self.mean is not None

    def start(self, model: nn.Module) -> None:
        """Begin averaging at the current weights (they are the first term of the mean)."""
        self.mean = {k: p.detach().clone() for k, p in model.named_parameters()}
        self.count = 1

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the weights after one more optimizer step into the mean; no-op until start."""
        if self.mean is None:
            return
        self.count += 1
        for k, p in model.named_parameters():
            self.mean[k].lerp_(p.detach(), 1.0 / self.count)

    @torch.no_grad()
    def _swap(self, model: nn.Module) -> None:
        assert self.mean is not None
        for k, p in model.named_parameters():
            held = p.detach().clone()
            p.copy_(self.mean[k])
            self.mean[k].copy_(held)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block (when averaging), its own
        again after it, even if the block raises."""
        if self.mean is None:
            yield
            return
        self._swap(model)
        try:
            yield
        finally:
            self._swap(model)

    def items(self) -> list[tuple[str, Tensor]]:
        """The averaged weights, keyed as the model's parameters (empty until start)."""
        return list((self.mean or {}).items())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Make the averaged weights the model's own for good (the end of a run)."""
        if self.mean is not None:
            for k, p in model.named_parameters():
                p.copy_(self.mean[k])

    def to_checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {PREFIX + k: v for k, v in (self.mean or {}).items()}
        return tensors, {"active": self.active, "count": self.count}

    def load_checkpoint(
        self,
        model: nn.Module,
        tensors: dict[str, Tensor],
        meta: dict[str, Any] | None,
        device: torch.device,
    ) -> None:
        """Restore from a checkpoint's tensors and its `average` record (None: not averaging;
        a checkpoint from before averaging existed has none). ValueError if they do not fit
        the model."""
        if not meta or not meta.get("active"):
            self.mean, self.count = None, 0
            return
        mean = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        params = dict(model.named_parameters())
        if mean.keys() != params.keys() or any(mean[k].shape != p.shape for k, p in params.items()):
            raise ValueError("the averaged weights do not fit the model")
        count = meta.get("count")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"bad average count {count!r}")
        self.mean = {k: v.to(device) for k, v in mean.items()}
        self.count = count
