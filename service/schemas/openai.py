"""The OpenAI-compatible `/v1` API: the completions request, its answer, the model list.

Field names and meanings follow OpenAI's legacy completions API (and vLLM's `top_k`
extension), so its SDKs and the tools built on them (lm-evaluation-harness) work unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .common import MODEL_REF_PATTERN, Text
from .strict import StrictInput

# Accepted only at the value that changes nothing: anything else is a 400 naming the field.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "best_of": (None, 1),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class CompletionRequest(StrictInput):
    # Unknown fields are kept, then refused with a 400 that names them (see completions.py).
    model_config = ConfigDict(
        extra="allow",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {"model": "lstm", "prompt": "i grew up in france . i speak", "max_tokens": 3,
                 "temperature": 0, "logprobs": 2},
                {"model": "gru", "prompt": ["the clouds are", "the keys to the"],
                 "max_tokens": 5, "temperature": 0.8, "top_p": 0.9, "n": 2, "seed": 7},
                {"model": "lstm", "prompt": "the clouds are in the sky", "max_tokens": 0,
                 "echo": True, "logprobs": 1},
            ]
        },
    )  # fmt: skip

    model: str = Field(pattern=MODEL_REF_PATTERN, description="`name` or `name@version`.")
    prompt: Text | list[Text] = Field(description="One prompt, or several (one choice each).")
    max_tokens: int = Field(16, ge=0, description="Words to generate (0: none, with `echo`).")
    temperature: float | None = Field(
        1.0, ge=0, le=100, description="0: greedy. Above 0: sample (at least 0.01)."
    )
    top_p: float | None = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    top_k: int | None = Field(None, ge=-1, description="Sample among the k likeliest; -1: all.")
    n: int = Field(1, ge=1, description="Completions per prompt.")
    stop: str | list[str] | None = Field(None, description="Up to 4 word sequences.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Sample j uses seed + j.")
    logprobs: int | None = Field(None, ge=0, description="Alternatives per word, with logprobs.")
    echo: bool = Field(False, description="Put the prompt (and its logprobs) before the text.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    suffix: str | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    best_of: int | None = None


class Logprobs(BaseModel):
    tokens: list[str] = Field(description="The text's pieces: each word with its leading space.")
    token_logprobs: list[float | None] = Field(description="null for the prompt's first word.")
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Counted in words, the model's tokens.")
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gatehouse"


class ModelCardList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
