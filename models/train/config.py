"""What a training run is asked (`TrainConfig`) and what it gives back (`TrainResult`, the
meta.json record), and how it can fail."""

from __future__ import annotations

import math
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any, get_args, get_type_hints

from models.corpus import Corpus
from models.lm import ARCHS, RNNLM, ModelConfig
from models.recipes import RECIPES
from models.tokenizer import Tokenizer

STOP_CANCEL = "cancel"
STOP_CHECKPOINT = "checkpoint"
OPTIMIZERS = ("adam", "sgd", "adamw", "ntasgd")
SCHEDULES = ("plateau", "cosine")
DEFAULT_LR = {"adam": 3e-3, "sgd": 1.0, "adamw": 3e-3, "ntasgd": 1.0}
# Gradient-norm clipping thresholds. Adam is insensitive to the gradient's scale, and a tight
# clip there reweights steps (on the built-in corpus 0.5 slowed learning the long-range link
# markedly); plain SGD needs the tight clip to stay stable.
DEFAULT_CLIP = {"adam": 5.0, "sgd": 0.5, "adamw": 5.0, "ntasgd": 0.5}


class TrainingError(Exception):
    """Training failed in a way the user can act on (diverged, bad config, bad checkpoint)."""


class TrainingCancelled(Exception):
    """should_stop() asked to stop; `checkpointed` says whether a checkpoint was written."""

    def __init__(self, message: str, *, checkpointed: bool = False, step: int = 0) -> None:
        super().__init__(message)
        self.checkpointed = checkpointed
        self.step = step


def knob(
    default: Any, help: str, *, low: float | None = None, above: bool = False, request: bool = False
) -> Any:
    """A hyperparameter, declared once: the train CLI, `models.compare` and (with `request`)
    the `/train` schema are generated from it. `low` is its fixed lower bound (`above`: the
    value must exceed it); operators bound it from above (service.jobs.bounds)."""
    meta = {"help": help, "low": low, "above": above, "request": request}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    arch: str = "lstm"
    embedding_size: int = knob(128, "Word embedding width.", low=1, request=True)
    hidden_size: int = knob(128, "Recurrent state width per layer.", low=1, request=True)
    num_layers: int = knob(1, "Stacked recurrent layers.", low=1, request=True)
    dropout: float = knob(
        0.0,
        "Dropout on the embeddings, between layers and before the decoder.",
        low=0.0,
        request=True,
    )
    tied: bool = knob(False, "Share embedding and decoder weights.", request=True)
    # Training-only regularisers (models.regularize); all off trains exactly as without them.
    weight_drop: float = knob(
        0.0, "DropConnect on the hidden-to-hidden weights while training.", low=0.0
    )
    embed_drop: float = knob(0.0, "Drop whole words from the embedding while training.", low=0.0)
    locked_dropout: bool = knob(
        False, "Dropout masks fixed over time (variational) instead of per step."
    )
    input_dropout: float | None = knob(
        None, "Locked dropout on the embeddings (default: --dropout).", low=0.0
    )
    layer_dropout: float | None = knob(
        None, "Locked dropout between layers (default: --dropout).", low=0.0
    )
    ar: float = knob(0.0, "Activation regularisation: weight of the top outputs' L2.", low=0.0)
    tar: float = knob(
        0.0, "Temporal activation regularisation: weight of the step-to-step L2.", low=0.0
    )
    batch_size: int = knob(20, "Rows trained side by side.", low=1, request=True)
    bptt: int = knob(35, "Truncated backprop length in tokens.", low=1, request=True)
    lr: float | None = knob(
        None,
        "Learning rate (default: 3e-3 for Adam, 1.0 for SGD).",
        low=0.0,
        above=True,
        request=True,
    )
    # adamw: Adam with decoupled weight_decay; ntasgd: SGD, then the iterate average
    # (models.averaging) once validation stops improving.
    optimizer: str = "adam"
    asgd_nonmono: int = knob(
        5, "ntasgd: start averaging when validation is worse than all but the last N.", low=1
    )
    weight_decay: float = knob(
        0.0, "Weight decay: an L2 term for adam and sgd, decoupled for adamw.", low=0.0
    )
    clip: float | None = knob(
        None, "Gradient-norm clipping (default: 5 for Adam, 0.5 for SGD; 0 disables).", low=0.0
    )
    epochs: int = knob(3, "Passes over the training text.", low=1, request=True)
    max_steps: int | None = knob(None, "Stop after this many steps at most.", low=1, request=True)
    schedule: str = knob(
        "plateau",
        "plateau: multiply the lr by lr_decay when validation stops improving; cosine: hold "
        "the lr until decay_start, then anneal to lr * min_lr_ratio at the end of the run.",
    )
    warmup_steps: int = knob(0, "Linear lr warm-up steps, either schedule.", low=0)
    decay_start: float = knob(
        0.0, "Where the cosine decay starts, as a fraction of all steps.", low=0.0
    )
    min_lr_ratio: float = knob(0.05, "The cosine schedule's final lr, over the lr.", low=0.0)
    lr_decay: float = 0.5
    patience: int = 0  # epochs without improvement tolerated before decaying
    early_stop: int = 3  # stop after this many epochs without improvement (0: never)
    seed: int = knob(0, "Seed of the initial weights and dropout.", low=0, request=True)
    device: str = "auto"
    max_vocab: int | None = knob(
        None,
        "Keep the most frequent words only (<unk>, <eos> and 1+ words).",
        low=3,
        request=True,
    )
    min_freq: int = knob(1, "Drop words seen fewer times than this.", low=1)
    lowercase: bool = False
    num_threads: int | None = knob(None, "torch threads (unset or 0: torch's default).", low=0)
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
    recipe: str | None = None  # the models.recipes name the defaults came from (a label)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for f in knobs():
            value, low = getattr(self, f.name), f.metadata["low"]
            if value is None or low is None:
                continue
            if not math.isfinite(value) or (value <= low if f.metadata["above"] else value < low):
                raise ValueError(f"{f.name} must be {'>' if f.metadata['above'] else '>='} {low}")
        if self.eval_batch_size < 1:
            raise ValueError("eval_batch_size must be >= 1")
        if self.min_lr_ratio > 1.0 or self.decay_start >= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1] and decay_start in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {', '.join(RECIPES)}")
        for name in ("weight_drop", "embed_drop", "input_dropout", "layer_dropout"):
            if (getattr(self, name) or 0.0) >= 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
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


def knobs(request_only: bool = False) -> list[Field[Any]]:
    """TrainConfig's hyperparameter fields (declared with `knob`), in declaration order."""
    found = [f for f in fields(TrainConfig) if "help" in f.metadata]
    return [f for f in found if f.metadata["request"]] if request_only else found


def knob_type(f: Field[Any]) -> type:
    """The field's value type without None: int, float, bool or str."""
    hint = get_type_hints(TrainConfig)[f.name]
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if args else hint


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
