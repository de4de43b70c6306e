"""POST /predict and POST /generate."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from .common import ModelRef, Prediction, Request, Served, Text, TextsRequest


class PredictRequest(TextsRequest):
    top_k: int = Field(5, ge=1, description="How many next words to return.")
    # Below 0.01, logits / T overflows float32 and the softmax turns to NaN.
    temperature: float = Field(1.0, ge=0.01, le=100, description="Softmax temperature.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "lstm",
                    "text": "i grew up in france . the clouds are in the sky . i speak fluent",
                    "top_k": 5,
                },
                {"texts": ["the keys to the old cabinet", "the clouds are in the"], "top_k": 3},
            ]
        }
    }


class PredictResponse(Served):
    tokens: list[str]
    unknown: list[str] = Field(description="Input words not in the vocabulary (read as <unk>).")
    predictions: list[Prediction]


class PredictBatchResponse(BaseModel):
    results: list[PredictResponse]


class GenerateRequest(Request):
    text: Text
    model: str | None = ModelRef
    max_words: int = Field(20, ge=1)
    temperature: float | None = Field(
        None, ge=0, le=100, description="Left out or 0: greedy. From 0.01 to 100: sample."
    )
    top_k: int | None = Field(None, ge=1, description="Sample only among the k likeliest.")
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Makes sampling repeatable; sample j uses seed + j."
    )
    top_p: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Nucleus sampling: only the likeliest words whose "
        "probabilities add up to top_p (after temperature and top_k).",
    )
    stop: list[Text] | None = Field(
        None, max_length=4, description="Word sequences that end the generation (not included)."
    )
    n: int = Field(1, ge=1, description="Samples of the continuation, generated together.")
    alternatives: int = Field(
        0, ge=0, description="Also report the k likeliest words at each generated position."
    )
    stream: bool = Field(
        False,
        description="Server-Sent Events: one `word` event per word, then `done` "
        "(also with `Accept: text/event-stream`).",
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"model": "gru", "text": "i grew up in spain .", "max_words": 12},
                {"text": "the clouds are", "max_words": 8, "temperature": 0.8, "seed": 7},
                {"text": "the keys to the", "max_words": 10, "temperature": 1.0, "top_p": 0.9,
                 "stop": ["."], "n": 3, "seed": 1, "alternatives": 2},
            ]
        }
    }  # fmt: skip

    @model_validator(mode="after")
    def _usable_temperature(self) -> GenerateRequest:
        if self.temperature is not None and 0 < self.temperature < 0.01:
            raise ValueError("temperature must be 0 (greedy) or from 0.01 to 100")
        return self


class Sample(BaseModel):
    text: str = Field(description="The input text continued by the generated words.")
    words: list[str]
    probs: list[float] = Field(
        description="Each word's probability under the model (temperature 1, no top-k), as "
        "`/predict` reports it: also when sampled, where it may lie outside any top-k."
    )
    finish_reason: Literal["length", "stop"] = Field(
        "length", description="`stop`: a stop sequence ended it (its words left out)."
    )
    alternatives: list[list[Prediction]] | None = Field(
        None, description="With `alternatives`: the likeliest words at each position."
    )


class GenerateResponse(Sample, Served):
    """The first sample's fields at the top level; with n > 1, `samples` has all of them."""

    samples: list[Sample] | None = None
    unknown: list[str]
