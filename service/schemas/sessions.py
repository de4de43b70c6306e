"""POST /sessions, POST /sessions/{id}/feed, GET and DELETE /sessions/{id}."""

from __future__ import annotations

from pydantic import Field

from .common import ModelRef, Prediction, Request, Served


class SessionCreate(Request):
    model: str | None = ModelRef

    model_config = {"json_schema_extra": {"examples": [{"model": "lstm"}, {"model": "gru@1"}]}}


class SessionInfo(Served):
    session_id: str = Field(description="Names the session; its session_token opens it.")
    version: int = Field(description="The version the session is pinned to for its lifetime.")
    history_length: int = Field(description="Tokens fed so far.")
    feeds: int = Field(description="Successful feeds so far.")
    created_at: str = Field(description="UTC, ISO 8601.")
    idle_ttl_s: float = Field(description="A session unused for this long expires.")
    expires_in_s: float = Field(description="Seconds left before expiry unless used again.")


class SessionCreated(SessionInfo):
    session_token: str = Field(
        description="The session's secret, answered only here: every later call on the "
        "session sends it as the X-Session-Token header (403 without it)."
    )


class FeedRequest(Request):
    text: str = Field(description="More text; tokens are appended to everything fed so far.")
    top_k: int = Field(5, ge=1, description="How many next words to return.")
    temperature: float = Field(1.0, ge=0.01, le=100, description="Softmax temperature.")

    model_config = {
        "json_schema_extra": {
            "examples": [{"text": "i grew up in france .", "top_k": 3}, {"text": "i speak"}]
        }
    }


class FeedResponse(Served):
    session_id: str
    history_length: int = Field(description="Tokens fed so far, this feed included.")
    tokens: list[str] = Field(description="The tokens of this feed.")
    unknown: list[str] = Field(description="Words of this feed read as <unk>.")
    predictions: list[Prediction] = Field(
        description="The word after everything fed so far: the same as POST /predict on the "
        "fed texts joined by spaces."
    )
