"""GET and POST /gates."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from .common import ModelRef, Prediction, Request, Served, Text


class GatesRequest(Request):
    text: Text
    model: str | None = ModelRef
    top_k: int = Field(5, ge=1)
    layers: list[int] | None = Field(None, description="Layer indices to return (default all).")
    units: list[int] | None = Field(None, description="Hidden-unit indices (default all).")
    round: int | None = Field(None, ge=0, le=8, description="Round values to this many decimals.")
    summary_only: bool = Field(False, description="Return the summary, not the per-token rows.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"model": "lstm", "text": "i grew up in france", "units": [0, 1, 2], "round": 3},
                {"model": "gru", "text": "the clouds are in the sky", "summary_only": True},
            ]
        }
    }


class GateLayer(BaseModel):
    layer: int
    gates: dict[str, list[list[float]]]


class GatesResponse(Served):
    tokens: list[str]
    unknown: list[str]
    units: list[int] | None = Field(description="The unit indices of each row (null: all).")
    layers: list[GateLayer]
    summary: dict[str, Any] = Field(
        description="`{layers: [{layer, gates: {gate: {mean, frac_below_0_1, frac_above_0_9}}}]}`"
        " over the rows returned (saturation: Karpathy et al. 2015)."
    )
    predictions: list[Prediction]
