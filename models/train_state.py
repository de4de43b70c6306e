"""The checkpoint state's old import path; it lives in models/train/state.py."""

from models.train.state import LoopState, capture, fingerprint, restore, saved_step

__all__ = ["LoopState", "capture", "fingerprint", "restore", "saved_step"]
