"""What a training run is asked (`TrainConfig`) and what it gives back (`TrainResult`, the
meta.json record), and how it can fail."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from models.corpus import Corpus
from models.lm import ARCHS, RNNLM, ModelConfig
from models.tokenizer import Tokenizer

STOP_CANCEL = "cancel"
STOP_CHECKPOINT = "checkpoint"
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("plateau", "cosine")
DEFAULT_LR = {"adam": 3e-3, "sgd": 1.0}
# Gradient-norm clipping thresholds. Adam is insensitive to the gradient's scale, and a tight
# clip there reweights steps (on the built-in corpus 0.5 slowed learning the long-range link
# markedly); plain SGD needs the tight clip to stay stable.
DEFAULT_CLIP = {"adam": 5.0, "sgd": 0.5}


class TrainingError(Exception):
    """Training failed in a way the user can act on (diverged, bad config, bad checkpoint)."""


class TrainingCancelled(Exception):
    """should_stop() asked to stop; `checkpointed` says whether a checkpoint was written."""

    def __init__(self, message: str, *, checkpointed: bool = False, step: int = 0) -> None:
        super().__init__(message)
        self.checkpointed = checkpointed
        self.step = step


@dataclass
class TrainConfig:
    arch: str = "lstm"
    embedding_size: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    tied: bool = False
    batch_size: int = 20
    bptt: int = 35
    lr: float | None = None  # None: DEFAULT_LR for the optimizer
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip: float | None = None  # gradient-norm clipping; None: DEFAULT_CLIP; 0 disables
    epochs: int = 3
    max_steps: int | None = None
    # "plateau": multiply the lr by lr_decay when validation stops improving; "cosine": hold
    # lr until decay_start (a fraction of all steps), then anneal to lr * min_lr_ratio at the
    # end of the run; no plateau decay.
    schedule: str = "plateau"
    warmup_steps: int = 0  # linear warm-up, either schedule
    decay_start: float = 0.0
    min_lr_ratio: float = 0.05
    lr_decay: float = 0.5
    patience: int = 0  # epochs without improvement tolerated before decaying
    early_stop: int = 3  # stop after this many epochs without improvement (0: never)
    seed: int = 0
    device: str = "auto"
    max_vocab: int | None = None
    min_freq: int = 1
    lowercase: bool = False
    num_threads: int | None = None
    amp: bool = True  # bf16 autocast, on CUDA only
    unigram_bias: bool = True  # start the decoder bias at the unigram log-frequencies
    # Initial bias of the LSTM forget / GRU update gate (None: models.lm's). Larger values
    # make the state persist longer from the start (chrono-style), which long gaps need.
    gate_bias: float | None = None
    keep_best: bool = True  # end with the weights of the best validation, else the last
    eval_batch_size: int = 10
    progress_interval_s: float = 0.5
    checkpoint_interval_s: float = 300.0  # also checkpoint mid-epoch this often
    progress_bar: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
        if not 0.0 <= self.decay_start < 1.0:
            raise ValueError("decay_start must be in [0, 1)")
        for name in ("batch_size", "bptt", "epochs", "eval_batch_size", "min_freq"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.lr is not None and not (0.0 < self.lr < math.inf):
            raise ValueError("lr must be a positive number")
        if self.clip is not None and not (0.0 <= self.clip < math.inf):
            raise ValueError("clip must be >= 0 (0 disables clipping)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.model_config(vocab_size=2)  # sizes, dropout and tying are checked there

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def effective_clip(self) -> float:
        return self.clip if self.clip is not None else DEFAULT_CLIP[self.optimizer]

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            arch=self.arch,
            vocab_size=vocab_size,
            embedding_size=self.embedding_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            dropout=self.dropout,
            tied=self.tied,
        )

    def corpus_options(self) -> dict[str, Any]:
        """Keyword arguments for the corpus loaders in models.corpus."""
        return {"lowercase": self.lowercase, "max_vocab": self.max_vocab, "min_freq": self.min_freq}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    model: RNNLM
    tokenizer: Tokenizer
    config: TrainConfig
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


# Fields that do not change the numbers a run produces; a resumed run may differ in them.
RUNTIME_FIELDS = {
    "device",
    "num_threads",
    "progress_interval_s",
    "checkpoint_interval_s",
    "progress_bar",
}


def build_meta(result: TrainResult, corpus: Corpus) -> dict[str, Any]:
    """The meta.json content for store.save_version: hyperparameters, corpus and metrics."""
    hp = {k: v for k, v in result.config.to_dict().items() if k not in RUNTIME_FIELDS}
    hp["lr"] = result.config.effective_lr
    hp["clip"] = result.config.effective_clip
    return {
        "hyperparameters": hp,
        "lowercase": result.tokenizer.lowercase,
        "corpus": corpus.info(),
        "metrics": result.metrics,
        "history": result.history,
        "training_seconds": result.metrics.get("train_seconds"),
        "tokens_per_s": result.metrics.get("tokens_per_s"),
    }
