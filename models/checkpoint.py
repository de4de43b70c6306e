"""Resumable training checkpoints: one safetensors file, JSON state in its header.

Everything a run needs to continue exactly (weights, optimizer moments, RNG state, carried
hidden state, counters, history) goes into a single file, written to a temp name and renamed,
so a crash leaves either the previous checkpoint or the new one. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

CHECKPOINT_FILE = "train-state.safetensors"
_STATE_KEY = "gatehouse_train_state"


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used; the message says why."""


def checkpoint_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def nonfinite(tensors: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, sorted.

    Such weights load without complaint and then answer every input with NaN: whoever loads
    weights refuses them here rather than serve or resume from them.
    """
    return sorted(
        key
        for key, value in tensors.items()
        if value.dtype.is_floating_point and not bool(torch.isfinite(value).all())
    )


def save_checkpoint(
    directory: str | os.PathLike[str], tensors: dict[str, Tensor], state: dict[str, Any]
) -> Path:
    """Atomically replace the checkpoint in `directory` with these tensors and state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(directory)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {_STATE_KEY: json.dumps(state, allow_nan=True)}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=directory)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata=header)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return target


def load_checkpoint(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """(tensors, state) of the checkpoint in `directory`, or None when there is none."""
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = json.loads(header[_STATE_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint state is not a JSON object")
    bad = nonfinite(tensors)
    if bad:
        raise CheckpointError(f"{path}: non-finite values (NaN or infinity) in {bad}")
    return tensors, state


def load_checkpoint_state(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Only the JSON state of the checkpoint in `directory` (no tensors read), or None."""
    path = checkpoint_path(directory)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            state = json.loads((f.metadata() or {})[_STATE_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable training checkpoint: {e}") from e
    return state if isinstance(state, dict) else None


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors and JSON-able values."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, _, k = key.partition(".")
        state.setdefault(int(pid), {})[k] = v.clone()  # never share storage with the source
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
