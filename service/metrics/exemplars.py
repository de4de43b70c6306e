"""Exemplars for the request-latency histogram: which request (and which trace) an observation
came from, so a slow bucket on a dashboard leads to its access-log line and its trace.

Exemplars only travel in the OpenMetrics format; the 0.0.4 text format leaves them out.
"""

from __future__ import annotations

import re

from starlette.types import Scope

# OpenMetrics caps an exemplar's label names and values together at 128 UTF-8 characters.
MAX_EXEMPLAR_CHARS = 128
REQUEST_ID = "request_id"
TRACE_ID = "trace_id"

_TRACEPARENT_KEY = b"traceparent"
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex. Versions after 00 may
# append fields, so only version 00 must end after the flags.
_TRACEPARENT_RE = re.compile(
    r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\s]*)?$"
)
_ZERO_TRACE = "0" * 32
_ZERO_PARENT = "0" * 16


def trace_id_from(scope: Scope) -> str | None:
    """The trace id of a valid `traceparent` header; None when there is none or it is invalid
    (the spec says to ignore such a header, not to fail the request)."""
    for key, value in scope.get("headers", ()):
        if key != _TRACEPARENT_KEY:
            continue
        try:
            text = value.decode("ascii").strip()
        except UnicodeDecodeError:
            return None
        m = _TRACEPARENT_RE.match(text)
        if m is None:
            return None
        version, trace_id, parent_id, _, rest = m.groups()
        if version == "ff" or (version == "00" and rest):
            return None
        if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
            return None
        return trace_id
    return None


def exemplar_labels(request_id: object, trace_id: str | None) -> dict[str, str] | None:
    """Labels for one observation's exemplar, within the OpenMetrics size cap. The trace id is
    always short (32 hex); a request id too long to fit beside it is left out rather than cut,
    since a cut id would match no log line."""
    labels: dict[str, str] = {}
    used = 0
    if trace_id is not None:
        labels[TRACE_ID] = trace_id
        used = len(TRACE_ID) + len(trace_id)
    if isinstance(request_id, str) and request_id:
        if used + len(REQUEST_ID) + len(request_id) <= MAX_EXEMPLAR_CHARS:
            labels[REQUEST_ID] = request_id
    return labels or None
