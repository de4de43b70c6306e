"""The Open Inference Protocol's error shape on `/v2/*`: `{"error": "<message>"}`.

`tritonclient` shows that string as the exception's message.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from ..errors import ApiError


def translate(status: int, body: bytes) -> tuple[int, bytes]:
    """Gatehouse's error body -> (status, the protocol's error body); 422 becomes 400."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and "message" in parsed:
        message = str(parsed["message"])
    else:
        message = body.decode(errors="replace")
    return (400 if status == 422 else status), orjson.dumps({"error": message})


def invalid(e: ValidationError, sent_as: dict[str, str] | None = None) -> ApiError:
    """A 400 naming each invalid parameter, from pydantic's report; `sent_as` maps a field
    of the Gatehouse request to the name the client sent it under."""
    names = sent_as or {}
    problems = "; ".join(
        f"{'.'.join(names.get(str(p), str(p)) for p in err['loc'])}: {err['msg']}"
        for err in e.errors()[:5]
    )
    return ApiError(400, problems)
