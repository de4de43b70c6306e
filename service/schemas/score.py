"""POST /score."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .common import Prediction, Served, TextsRequest


class ScoreRequest(TextsRequest):
    top_k: int = Field(
        0, ge=0, description="Also return the model's k likeliest words at each position."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"model": "lstm", "text": "i grew up in france . i speak fluent french"},
                {"texts": ["the clouds are in the sky", "the sky are in the clouds"]},
                {"model": "gru", "text": "the keys to the cabinet are", "top_k": 3},
            ]
        }
    }


class ScoreResponse(Served):
    tokens: list[str]
    unknown: list[str] = Field(description="Input words not in the vocabulary (read as <unk>).")
    logprobs: list[float | None] = Field(
        description="Natural log of P(tokens[i] | tokens before i), one per token; null for "
        "the first token, which has no context."
    )
    top: list[list[Prediction] | None] | None = Field(
        None,
        description="With top_k: at each position the k words the model found likeliest "
        "there (null for the first token); left out otherwise.",
    )
    total_logprob: float = Field(description="Sum of the non-null logprobs.")
    perplexity: float | None = Field(
        description="exp(-total_logprob / (tokens - 1)); null for a one-token text."
    )


class ScoreBatchResponse(BaseModel):
    results: list[ScoreResponse]
