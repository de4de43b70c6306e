"""The OIP generate extension: `POST /v2/models/{m}/generate` and `.../generate_stream`,
`text_input` in, `text_output` out, over `/generate`'s own plan and word loop.

Sampling options may come at the top level or under `parameters`: `max_tokens` (default
20), `temperature`, `top_k`, `top_p`, `seed`, `stop`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError

from .. import generate
from ..errors import ApiError
from ..inference import InferenceEngine
from ..schemas.predict import GenerateRequest
from .errors import invalid

_OPTIONS = ("temperature", "top_k", "top_p", "seed", "stop")


def plan(engine: InferenceEngine, ref: str, body: Any) -> generate.GeneratePlan:
    if not isinstance(body, dict):
        raise ApiError(400, "the generate request must be a JSON object")
    text = body.get("text_input")
    if not isinstance(text, str):
        raise ApiError(400, "text_input: a string is required")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "parameters must be an object")
    merged = {k: v for k, v in body.items() if k not in ("text_input", "parameters", "id")}
    merged.update(params)
    merged.pop("stream", None)  # the path says which
    stop = merged.get("stop")
    max_tokens = merged.get("max_tokens", 20)
    limit = engine.settings.max_words
    # Checked here, not by the plan, so the message names the parameter the client sent.
    if isinstance(max_tokens, int) and max_tokens > limit:
        raise ApiError(400, f"max_tokens {max_tokens} over the limit of {limit}")
    try:
        req = GenerateRequest(
            text=text,
            model=ref,
            max_words=max_tokens,
            stop=[stop] if isinstance(stop, str) else stop,
            **{k: merged[k] for k in _OPTIONS if k in merged and k != "stop"},
        )
    except ValidationError as e:
        raise invalid(e, {"max_words": "max_tokens"}) from None
    return generate.plan(engine, req)


async def run(engine: InferenceEngine, p: generate.GeneratePlan) -> dict[str, Any]:
    answer = await generate.run(engine, p)
    return {
        "model_name": answer.model,
        "model_version": str(answer.version),
        "text_output": answer.text,
    }


async def events(engine: InferenceEngine, p: generate.GeneratePlan) -> AsyncIterator[bytes]:
    """One event per word (`text_output`: the word with its leading space)."""
    head = {"model_name": p.loaded.name, "model_version": str(p.loaded.version)}
    try:
        async for word in engine.generation(p.loaded, p.enc, p.samplings[0]):
            piece = "\n" if word.word == "<eos>" else " " + word.word
            yield b"data: " + orjson.dumps({**head, "text_output": piece}) + b"\n\n"
    except ApiError as e:  # the status line is long sent: the error goes in the stream
        yield b"data: " + orjson.dumps({"error": e.message}) + b"\n\n"
