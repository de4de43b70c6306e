"""What a training run saves to resume exactly, and how it is put back.

`LoopState` is every counter of the loop that a checkpoint carries; `capture` turns it and the
run's tensors (weights, optimizer moments, best weights so far, the carried hidden state, the
RNG) into tensors plus JSON for models.checkpoint; `restore` checks that a checkpoint belongs
to the same config and corpus and loads it back.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models import checkpoint as ckpt
from models.corpus import Corpus
from models.lm import RNNLM

from .config import RUNTIME_FIELDS, TrainConfig, TrainingError

FORMAT = 1


@dataclass
class LoopState:
    """The loop's counters, saved as the checkpoint's JSON `loop` record."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_pos: int = 0  # next batch within the epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    bad_epochs: int = 0
    lr_factor: float = 1.0  # plateau decays so far
    stopped_early: bool = False
    epoch_loss: float = 0.0  # summed token NLL of the current epoch's finished steps
    epoch_tokens: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Every field must be there: a partial record would resume a different run."""
        for f in fields(self):
            setattr(self, f.name, state[f.name])


@dataclass
class Restored:
    """What `restore` hands back besides the model and optimizer it loads in place."""

    best_state: dict[str, Tensor] | None
    hidden: Tensor | tuple[Tensor, Tensor] | None
    elapsed: float  # wall time of the earlier sessions


def fingerprint(cfg: TrainConfig, corpus: Corpus) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the config and the corpus."""
    return {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS},
        "corpus_sha256": corpus.sha256,
        "vocab_size": len(corpus.tokenizer.vocab),
    }


def _same_config(saved: Any, current: dict[str, Any]) -> bool:
    """The saved config is the current one. A setting added since the checkpoint was written
    is absent from it and matches while it has its default (which is what that run used)."""
    if not isinstance(saved, dict) or any(k not in current for k in saved):
        return False
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    return all(
        saved[k] == v if k in saved else (k in defaults and defaults[k] == v)
        for k, v in current.items()
    )


def _without_tied(model: RNNLM) -> dict[str, Tensor]:
    # A tied decoder weight is the embedding weight; store it once.
    return {
        k: v
        for k, v in model.state_dict().items()
        if not (model.cfg.tied and k == "decoder.weight")
    }


def saved_step(checkpoint_dir: str | Path) -> int | None:
    """The optimizer step a checkpoint in `checkpoint_dir` resumes from; None when none."""
    state = ckpt.load_checkpoint_state(checkpoint_dir)
    step = ((state or {}).get("loop") or {}).get("step")
    return step if isinstance(step, int) else None


def capture(
    model: RNNLM,
    opt: torch.optim.Optimizer,
    loop: LoopState,
    *,
    best_state: dict[str, Tensor] | None,
    hidden: Tensor | tuple[Tensor, Tensor] | None,
    device: torch.device,
    fingerprint: dict[str, Any],
    elapsed: float,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    tensors.update({f"model.{k}": v for k, v in _without_tied(model).items()})
    tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(opt)
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    if hidden is not None:
        hs = hidden if isinstance(hidden, tuple) else (hidden,)
        tensors.update({f"hidden.{i}": h for i, h in enumerate(hs)})
    tensors["rng.cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    meta = {
        "format": FORMAT,
        **fingerprint,
        "optimizer": opt_meta,
        "loop": loop.state_dict(),
        "has_best": best_state is not None,
        "elapsed": elapsed,
    }
    return tensors, meta


def restore(
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
    model: RNNLM,
    opt: torch.optim.Optimizer,
    loop: LoopState,
    *,
    device: torch.device,
    fingerprint: dict[str, Any],
    where: str,
) -> Restored:
    """Load the checkpoint into `model`, `opt`, `loop` and the RNG; the rest is returned."""
    if meta.get("format") != FORMAT:
        raise TrainingError(f"checkpoint format {meta.get('format')!r} is not supported")
    for key, value in fingerprint.items():
        same = _same_config(meta.get(key), value) if key == "config" else meta.get(key) == value
        if not same:
            raise TrainingError(
                f"the checkpoint in {where} was made with a different {key} "
                "(config or corpus changed); remove it to start over"
            )

    def group(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        model_state = group("model.")
        if model.cfg.tied:
            model_state["decoder.weight"] = model_state["embedding.weight"]
        model.load_state_dict(model_state)
        ckpt.optimizer_from_flat(opt, group("optim."), meta["optimizer"])
        loop.load_state_dict(meta["loop"])
        rng = tensors["rng.cpu"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise TrainingError(f"checkpoint in {where} is inconsistent: {e}") from e
    for state in opt.state.values():  # optimizer moments follow the model's device
        for k, v in state.items():
            if isinstance(v, Tensor) and k != "step":
                state[k] = v.to(device)
    hs = [tensors[f"hidden.{i}"].to(device) for i in range(2) if f"hidden.{i}" in tensors]
    torch.set_rng_state(rng)
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    return Restored(
        best_state=group("best.") if meta.get("has_best") else None,
        hidden=(hs[0], hs[1]) if len(hs) == 2 else (hs[0] if hs else None),
        elapsed=float(meta.get("elapsed", 0.0)),
    )
