"""The training loop's old import path; it lives in models/train/loop.py."""

from models.train.loop import Trainer, batchify, set_gate_bias

__all__ = ["Trainer", "batchify", "set_gate_bias"]
