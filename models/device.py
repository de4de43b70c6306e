"""Which torch device a `--device` setting means: the one rule for training, serving and
evaluation; and the words a results page uses for the machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

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


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` knows elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(device: torch.device) -> str:
    """The processor that did the work, the core count and torch's version, in one line."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return f"{where}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
