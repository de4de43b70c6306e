"""How big and how long a training job may be: the operator's limits, from the environment.

Each upper bound is a `GATEHOUSE_TRAIN_MAX_<FIELD>` env var (say GATEHOUSE_TRAIN_MAX_HIDDEN_SIZE
=2048), so an operator raises a limit without a code change. Lower bounds are what makes a
model well-formed at all: they are fixed, declared with the hyperparameter (`TrainConfig`'s
`knob`) and enforced by the request schema. A request out of range is refused with the range.
"""

from __future__ import annotations

from typing import Any

import annotated_types
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..schemas.jobs import CorpusOptions, TrainRequest


def _lower_bounds() -> dict[str, tuple[float, bool]]:
    """field -> (lowest allowed value, exclusive?), as the request schema declares them."""
    out: dict[str, tuple[float, bool]] = {}
    for schema in (TrainRequest, CorpusOptions):
        for name, info in schema.model_fields.items():
            for bound in info.metadata:
                if isinstance(bound, annotated_types.Ge):
                    out[name] = (bound.ge, False)  # type: ignore[assignment]
                elif isinstance(bound, annotated_types.Gt):
                    out[name] = (bound.gt, True)  # type: ignore[assignment]
    return out


_LOW = _lower_bounds()


class TrainBounds(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEHOUSE_TRAIN_", extra="ignore")

    max_embedding_size: int = Field(1024, ge=1)
    max_hidden_size: int = Field(1024, ge=1)
    max_num_layers: int = Field(4, ge=1)
    max_dropout: float = Field(0.9, ge=0.0, lt=1.0)
    max_batch_size: int = Field(512, ge=1)
    max_bptt: int = Field(512, ge=1)
    max_lr: float = Field(100.0, gt=0.0)
    max_epochs: int = Field(100, ge=1)
    max_max_steps: int = Field(1_000_000, ge=1)
    max_max_vocab: int = Field(100_000, ge=3)
    max_seed: int = Field(2**31 - 1, ge=0)
    max_valid_fraction: float = Field(0.5, gt=0.0, lt=0.9)
    # Whole-model size (embedding + recurrent + decoder at the largest vocabulary allowed):
    # the one bound that stops a combination of in-range sizes from exhausting memory.
    max_params: int = Field(50_000_000, ge=1)
    # Wall-clock time one job may spend running, over all its attempts; then it fails.
    max_job_seconds: float = Field(6 * 3600.0, gt=0)

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The bounded fields: a fixed lower bound and an upper one here."""
        return tuple(f for f in _LOW if f"max_{f}" in cls.model_fields)

    def range_of(self, field: str) -> tuple[float, float, bool]:
        low, exclusive = _LOW[field]
        return low, getattr(self, f"max_{field}"), exclusive

    def describe(self, field: str) -> str:
        low, high, exclusive = self.range_of(field)
        return f"{'>' if exclusive else '>='} {low} and <= {high}"

    def check(self, values: dict[str, Any]) -> list[tuple[str, str]]:
        """(field, problem) for each value out of range; None values are not checked."""
        problems: list[tuple[str, str]] = []
        for field in self.fields():
            value = values.get(field)
            if value is None:
                continue
            low, high, exclusive = self.range_of(field)
            if (value <= low if exclusive else value < low) or value > high:
                problems.append(
                    (
                        field,
                        f"must be {self.describe(field)} (got {value}); the operator sets "
                        f"the upper bound with GATEHOUSE_TRAIN_MAX_{field.upper()}",
                    )
                )
        return problems


def estimate_params(
    arch: str, vocab: int, embedding: int, hidden: int, layers: int, tied: bool
) -> int:
    """Parameter count of an RNNLM with these sizes (matches `RNNLM.num_params`)."""
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[arch]
    recurrent = 0
    for layer in range(layers):
        inputs = embedding if layer == 0 else hidden
        recurrent += gates * (inputs * hidden + hidden * hidden + 2 * hidden)
    decoder = (0 if tied else hidden * vocab) + vocab
    return vocab * embedding + recurrent + decoder
