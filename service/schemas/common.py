"""Pieces shared by several areas."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .strict import StrictInput

MODEL_REF_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}(@[1-9][0-9]{0,8})?$"

ModelRef = Field(
    default=None,
    pattern=MODEL_REF_PATTERN,
    description="`name` or `name@version`; the default model when left out.",
    examples=["lstm", "gru@1"],
)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("text is empty or only whitespace")
    return text


Text = Annotated[str, AfterValidator(_not_blank)]


class Request(StrictInput):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextsRequest(Request):
    """One `text` or a batch of `texts` for one model: /predict's and /score's common part."""

    text: Text | None = Field(None, description="One text; give this or `texts`.")
    texts: list[Text] | None = Field(None, min_length=1, description="A batch of texts.")
    model: str | None = ModelRef

    @model_validator(mode="after")
    def _one_of(self) -> TextsRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of `text` or `texts`")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else self.texts or []


class Served(BaseModel):
    """Which model version answered: the first fields of every inference response."""

    model: str
    version: int
    arch: str


class Prediction(BaseModel):
    word: str
    prob: float


class ErrorBody(BaseModel):
    status: int
    error: str
    message: str
