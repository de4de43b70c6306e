"""OpenAI's error shape on `/v1/*`: `{"error": {"message", "type", "param", "code"}}`.

`translate` turns Gatehouse's `{"status", "error", "message", "detail"}` into it, through
`service.error_shapes.ErrorShape`, so every error on those paths gets it, whoever raised it.
OpenAI's SDKs read the message from it, and OpenAI answers every invalid request with 400
(FastAPI's 422 for a body that fails validation).
"""

from __future__ import annotations

from typing import Any

import orjson


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    if status == 401:
        kind, code = "authentication_error", code or "invalid_api_key"
    elif status == 429:
        kind = "rate_limit_error"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _param(detail: Any) -> str | None:
    """The request field a Gatehouse error's `detail` names, if any."""
    if isinstance(detail, dict) and isinstance(detail.get("param"), str):
        return detail["param"]
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        # The top-level field: deeper parts of a location name pydantic's union branches.
        loc = [str(p) for p in detail[0].get("loc", ()) if p != "body"]
        return loc[0] if loc else None
    return None


def translate(status: int, body: bytes) -> tuple[int, bytes]:
    """Gatehouse's error body -> (status, OpenAI's error body)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or "message" not in parsed:
        return status, orjson.dumps(openai_error(status, body.decode(errors="replace")))
    message = str(parsed["message"])
    detail = parsed.get("detail")
    code = parsed.get("error") if isinstance(parsed.get("error"), str) else None
    if status == 404 and "model" in message:
        code = "model_not_found"
    if status == 422:
        status = 400
    return status, orjson.dumps(openai_error(status, message, _param(detail), code))
