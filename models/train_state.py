"""What a training run saves to resume exactly, and how it is put back.

`capture` turns a Trainer's state into tensors plus JSON (models.checkpoint writes them);
`restore` checks that a checkpoint belongs to the same config and corpus and loads it: weights,
optimizer moments, best weights so far, the carried hidden state, the RNG, and the counters
and history of the loop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from models import checkpoint as ckpt
from models.train import RUNTIME_FIELDS, TrainingError

if TYPE_CHECKING:
    from models.trainer import Trainer

FORMAT = 1
# Plain values of the loop, saved as JSON.
_LOOP_FIELDS = (
    "step",
    "epoch",
    "batch_pos",
    "history",
    "best_val",
    "bad_epochs",
    "lr_factor",
    "stopped_early",
    "epoch_loss",
    "epoch_tokens",
)


def fingerprint(tr: Trainer) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the config and the corpus."""
    cfg = {k: v for k, v in tr.cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    return {
        "config": cfg,
        "corpus_sha256": tr.corpus.sha256,
        "vocab_size": len(tr.corpus.tokenizer.vocab),
    }


def _without_tied(tr: Trainer, state: dict[str, Tensor]) -> dict[str, Tensor]:
    # A tied decoder weight is the embedding weight; store it once.
    return {k: v for k, v in state.items() if not (tr.model.cfg.tied and k == "decoder.weight")}


def saved_step(checkpoint_dir: str | Path) -> int | None:
    """The optimizer step a checkpoint in `checkpoint_dir` resumes from; None when none."""
    state = ckpt.load_checkpoint_state(checkpoint_dir)
    step = ((state or {}).get("loop") or {}).get("step")
    return step if isinstance(step, int) else None


def capture(tr: Trainer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    tensors.update({f"model.{k}": v for k, v in _without_tied(tr, tr.model.state_dict()).items()})
    tensors.update({f"best.{k}": v for k, v in (tr.best_state or {}).items()})
    opt_tensors, opt_meta = ckpt.optimizer_to_flat(tr.opt)
    tensors.update({f"optim.{k}": v for k, v in opt_tensors.items()})
    if tr.hidden is not None:
        hs = tr.hidden if isinstance(tr.hidden, tuple) else (tr.hidden,)
        tensors.update({f"hidden.{i}": h for i, h in enumerate(hs)})
    tensors["rng.cpu"] = torch.get_rng_state()
    if tr.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(tr.device)
    meta = {
        "format": FORMAT,
        **fingerprint(tr),
        "optimizer": opt_meta,
        "loop": {k: getattr(tr, k) for k in _LOOP_FIELDS},
        "has_best": tr.best_state is not None,
        "elapsed": tr.elapsed_before + time.monotonic() - tr.session_start,
    }
    return tensors, meta


def restore(tr: Trainer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    where = tr.checkpoint_dir
    if meta.get("format") != FORMAT:
        raise TrainingError(f"checkpoint format {meta.get('format')!r} is not supported")
    for key, value in fingerprint(tr).items():
        if meta.get(key) != value:
            raise TrainingError(
                f"the checkpoint in {where} was made with a different {key} "
                "(config or corpus changed); remove it to start over"
            )

    def group(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        model_state = group("model.")
        if tr.model.cfg.tied:
            model_state["decoder.weight"] = model_state["embedding.weight"]
        tr.model.load_state_dict(model_state)
        ckpt.optimizer_from_flat(tr.opt, group("optim."), meta["optimizer"])
        loop = {k: meta["loop"][k] for k in _LOOP_FIELDS}
        rng = tensors["rng.cpu"]
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise TrainingError(f"checkpoint in {where} is inconsistent: {e}") from e
    for state in tr.opt.state.values():  # optimizer moments follow the model's device
        for k, v in state.items():
            if isinstance(v, Tensor) and k != "step":
                state[k] = v.to(tr.device)
    tr.best_state = group("best.") if meta.get("has_best") else None
    hs = [tensors[f"hidden.{i}"].to(tr.device) for i in range(2) if f"hidden.{i}" in tensors]
    tr.hidden = (hs[0], hs[1]) if len(hs) == 2 else (hs[0] if hs else None)
    torch.set_rng_state(rng)
    if tr.device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], tr.device)
    for k, v in loop.items():
        setattr(tr, k, v)
    tr.elapsed_before = float(meta.get("elapsed", 0.0))
