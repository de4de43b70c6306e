"""Loaded by schemathesis (SCHEMATHESIS_HOOKS): JSON bodies sent with text no UTF-8 encoder
takes, a lone UTF-16 surrogate put into one of the drawn strings.

Schemathesis only draws encodable strings, and its case checks need them so; a client may
still send `"\\ud800"`, which Python decodes into a `str` that fails whenever it is encoded
again. So the surrogate goes in as the body is serialised: three bodies of four get one, at
a place chosen from the body itself, so a run stays deterministic."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from schemathesis.transport.requests import REQUESTS_TRANSPORT


def _string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _string_paths(v, (*path, i))]
    return []


def _replaced(value: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    out = list(value)
    out[head] = _replaced(out[head], rest, new)
    return out


def spoiled(body: Any) -> Any:
    """`body` with a lone surrogate in one of its strings (or as it is, one time in four)."""
    plain = json.dumps(body, sort_keys=True)
    rng = random.Random(hashlib.sha256(plain.encode()).digest())
    paths = _string_paths(body)
    if not paths or rng.random() < 0.25:
        return body
    path = rng.choice(paths)
    text: Any = body
    for key in path:
        text = text[key]
    at = rng.randint(0, len(text))
    surrogate = chr(rng.randint(0xD800, 0xDFFF))
    return _replaced(body, path, text[:at] + surrogate + text[at:])


@REQUESTS_TRANSPORT.serializer("application/json")
def _json_with_surrogates(ctx: Any, value: Any) -> dict[str, Any]:
    if isinstance(value, bytes):
        return {"data": value}
    # ensure_ascii writes the surrogate as the escape `\udXXX`: valid JSON text on the wire.
    raw = json.dumps(spoiled(value), ensure_ascii=True).encode("ascii")
    return {"data": raw, "headers": {"Content-Type": "application/json"}}
