"""POST /train, GET /jobs, GET /jobs/{id}, GET /datasets.

Types, shapes and the fixed lower bounds are checked here (the hyperparameter fields come from
`TrainConfig`'s declarations); upper bounds are the operator's (`service.jobs.bounds`), which
can change without a code change, so they are not baked into these fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from models.train.config import knob_type, knobs

from .common import Request

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # models.store.NAME_RE
DATASET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
JOB_ID_PATTERN = r"^[0-9a-f]{16}$"
JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class CorpusOptions(Request):
    valid_fraction: float | None = Field(
        None, ge=0.01, description="Share of the tokens held out for validation (default 0.1)."
    )
    lowercase: bool | None = Field(
        None, description="Lowercase the text first (default: true for built-ins, else false)."
    )


class CorpusSpec(CorpusOptions):
    """Exactly one source: inline `text`, a `builtin` corpus, or a named `dataset`."""

    text: str | None = Field(None, min_length=1, description="The corpus itself.")
    builtin: str | None = Field(
        None, pattern=r"^[a-z0-9_-]{1,64}$", description="A built-in corpus, e.g. `longrange`."
    )
    dataset: str | None = Field(
        None, pattern=DATASET_PATTERN, description="A dataset listed by GET /datasets."
    )

    @model_validator(mode="after")
    def _one_source(self) -> CorpusSpec:
        given = [k for k in ("text", "builtin", "dataset") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `text`, `builtin` or `dataset`")
        return self


class _TrainRequest(Request):
    name: str = Field(
        pattern=NAME_PATTERN, description="Model name; the result is its next version."
    )
    arch: Literal["rnn", "lstm", "gru"]
    corpus: CorpusSpec | None = Field(
        None, description="Required in JSON; with a multipart upload the file is the corpus."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "name": "my-gru",
                    "arch": "gru",
                    "corpus": {"builtin": "longrange"},
                    "epochs": 2,
                    "hidden_size": 128,
                },
                {"name": "tiny", "arch": "lstm", "corpus": {"text": "the cat sat on the mat ."}},
            ]
        }
    }

    def hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters given; each left out takes the trainer's default."""
        return {k: getattr(self, k) for k in HYPERPARAMETERS if getattr(self, k) is not None}


def _no_bool_for_int(value: Any) -> Any:
    # JSON true would otherwise pass as 1.
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    return value


def _knob_field(f: dataclasses.Field[Any]) -> tuple[Any, Any]:
    low, above = f.metadata["low"], f.metadata["above"]
    bound = {} if low is None else ({"gt": low} if above else {"ge": low})
    return knob_type(f) | None, Field(None, description=f.metadata["help"], **bound)


_KNOBS = knobs(request_only=True)
HYPERPARAMETERS = tuple(f.name for f in _KNOBS)
# One field per hyperparameter TrainConfig declares for requests, with its fixed lower bound
# (shown in OpenAPI); the operator's upper bounds are checked in service.jobs.intake.
TrainRequest = create_model(
    "TrainRequest",
    __base__=_TrainRequest,
    __doc__="POST /train: what to train, on which corpus, with which hyperparameters.",
    __validators__={
        "no_bool_for_int": field_validator(
            *(f.name for f in _KNOBS if knob_type(f) is int), mode="before"
        )(_no_bool_for_int)
    },
    **{f.name: _knob_field(f) for f in _KNOBS},
)


class TrainAccepted(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"


class JobModel(BaseModel):
    name: str
    version: int


class Job(BaseModel):
    job_id: str
    status: JobStatusName
    name: str
    arch: str
    progress: float = Field(ge=0.0, le=1.0)
    metrics: dict[str, Any] = Field(
        description="Latest progress: step, total_steps, epoch, loss, ppl, tokens_per_s, "
        "eta_s, val_ppl; on success the final metrics."
    )
    history: list[dict[str, Any]] = Field(
        description="One entry per finished epoch: epoch, train_loss, val_ppl, tokens_per_s, "
        "seconds."
    )
    model: JobModel | None = Field(None, description="The version it created (succeeded only).")
    error: str | None = Field(None, description="Why it failed (failed only).")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    request: dict[str, Any] = Field(description="The hyperparameters as requested.")
    config: dict[str, Any] | None = Field(None, description="The training config in effect.")
    corpus: dict[str, Any]
    attempts: int = Field(description="Worker starts: more than 1 after resuming.")
    interruptions: int
    note: str | None = None
    resumed_from_step: int | None = Field(
        None, description="The checkpoint step the latest attempt resumed from."
    )


class JobList(BaseModel):
    jobs: list[Job]


class Dataset(BaseModel):
    name: str
    kind: Literal["file", "dir"]
    bytes: int
    files: int
    splits: bool = Field(description="A directory with train.txt and valid.txt (and test.txt).")


class DatasetList(BaseModel):
    datasets: list[Dataset]
