"""Which torch device a `--device` setting means: the one rule for training, serving and
evaluation."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; asking for CUDA without one is a
    `RuntimeError`, never a silent fall back to the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but torch sees no CUDA device")
    return torch.device(device)
