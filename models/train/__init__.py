"""Training: `train(cfg, corpus, callback, should_stop, checkpoint_dir) -> TrainResult`.

`config` says what a run is asked and gives back, `loop` runs it (the stopping and resuming
protocol is described there), `state` is what a checkpoint carries, `cli` is
`python -m models.train`.
"""

from models.evaluate import final_metrics

from .check import HeldOutCheck
from .config import (
    DEFAULT_CLIP,
    DEFAULT_LR,
    OPTIMIZERS,
    RUNTIME_FIELDS,
    SCHEDULES,
    STOP_CANCEL,
    STOP_CHECKPOINT,
    TrainConfig,
    TrainingCancelled,
    TrainingError,
    TrainResult,
    build_meta,
)
from .loop import Trainer, batchify, set_gate_bias, train

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_LR",
    "HeldOutCheck",
    "OPTIMIZERS",
    "RUNTIME_FIELDS",
    "SCHEDULES",
    "STOP_CANCEL",
    "STOP_CHECKPOINT",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingCancelled",
    "TrainingError",
    "batchify",
    "build_meta",
    "final_metrics",
    "set_gate_bias",
    "train",
]
