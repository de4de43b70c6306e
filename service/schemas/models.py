"""GET /models and GET /models/{name}."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str
    arch: str
    version: int
    default: bool
    device: str
    params: int
    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_layers: int
    tied: bool
    dropout: float
    metrics: dict[str, Any]
    created_at: str | None = None


class FailedVersion(BaseModel):
    version: int
    error: str


class FailedModel(BaseModel):
    name: str
    versions: list[FailedVersion] = Field(description="Each version that failed to load, and why")


class ModelList(BaseModel):
    models: list[ModelInfo]
    failed: list[FailedModel] = Field(
        [], description="Names in the store none of whose versions loaded: not served"
    )


class VersionInfo(BaseModel):
    version: int
    loaded: bool
    created_at: str | None = None
    metrics: dict[str, Any] = {}
    history: list[dict[str, Any]] = Field(
        [], description="Per-epoch training record from meta.json: epoch, train_loss, val_ppl..."
    )
    error: str | None = None


class ModelDetail(ModelInfo):
    versions: list[VersionInfo]
