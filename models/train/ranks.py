"""The process group of a launch: who this rank is, joining and leaving, each rank's rows.

torchrun (and `--nproc`, which uses torchrun's agent) tells each process its place through
`WORLD_SIZE`, `RANK` and `LOCAL_RANK`; `join` turns them into a gloo (CPU) or nccl (CUDA,
one GPU per local rank) process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import Tensor

from models.device import resolve_device

from .config import TrainConfig, TrainingError

Hidden = Tensor | tuple[Tensor, Tensor] | None


@dataclass(frozen=True)
class Rank:
    """This process's place in a launch (the variables torchrun sets)."""

    rank: int
    world_size: int
    local_rank: int


def launched_processes() -> int:
    """How many processes the launch this one belongs to has (1 outside torchrun/--nproc)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def check_processes(batch_size: int, processes: int) -> None:
    """The global batch is shared out by rows: every process gets the same number."""
    if processes < 1:
        raise ValueError(f"--nproc must be >= 1, got {processes}")
    if batch_size % processes:
        raise ValueError(
            f"batch_size {batch_size} does not divide by {processes} processes: each process "
            f"trains batch_size / processes rows (try --batch-size "
            f"{max(processes, batch_size // processes * processes)})"
        )


def join(cfg: TrainConfig) -> tuple[TrainConfig, Rank]:
    """Join the launch's process group (gloo on CPU, nccl on CUDA: one GPU per local rank).

    Returns the config with this rank's device.
    """
    rank = Rank(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as e:
        raise TrainingError(str(e)) from None
    if device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)
        torch.cuda.set_device(device)
        cfg = replace(cfg, device=str(device))
        dist.init_process_group("nccl", device_id=device)
    else:
        cfg = replace(cfg, device="cpu")
        dist.init_process_group("gloo")
    return cfg, rank


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_rows(data: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s block of rows of a batchified [B, ...] tensor (dim 0 split in order)."""
    rows = data.shape[0] // world_size
    return data[rank * rows : (rank + 1) * rows].contiguous()


def hidden_rows(hidden: Hidden, rank: int, world_size: int) -> Hidden:
    """The rows of a carried state [layers, B, H] (or an LSTM's pair) that belong to `rank`."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        h, c = (rank_rows(x.transpose(0, 1), rank, world_size).transpose(0, 1) for x in hidden)
        return h.contiguous(), c.contiguous()
    return rank_rows(hidden.transpose(0, 1), rank, world_size).transpose(0, 1).contiguous()
