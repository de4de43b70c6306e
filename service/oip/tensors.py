"""Tensors of the Open Inference Protocol's HTTP/REST form, JSON or binary.

The binary tensor data extension (what `tritonclient` sends and asks for by default): the
body is a JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor's
raw bytes in the order the header lists them (`parameters.binary_data_size`). A BYTES
element is a 4-byte little-endian length and its bytes; FP32 and INT32 are little-endian.

Outputs are flat row-major Python lists with their shape: the JSON form carries them as
they are, so no array library sits between the engine's answer and the response bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import ApiError

HEADER = "inference-header-content-length"
_PACK = {"FP32": "f", "INT32": "i"}


@dataclass(frozen=True, slots=True)
class Output:
    """One output tensor: its datatype, its shape and its elements, flat in row-major order."""

    datatype: str  # "BYTES", "FP32" or "INT32"
    shape: list[int]
    data: list[Any]


def parse_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON header, the binary part after it)."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise ApiError(400, f"invalid {HEADER} header: {header_length!r}") from None
        if not 0 < size <= len(body):
            raise ApiError(400, f"{HEADER} {size} outside the body of {len(body)} bytes")
    try:
        header = orjson.loads(body[:size] if size < len(body) else body)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"the inference request is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ApiError(400, "the inference request must be a JSON object")
    return header, body[size:]


def _strings(raw: bytes) -> list[str]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ApiError(400, "BYTES tensor data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise ApiError(400, "BYTES tensor data ends inside an element")
        out.append(raw[at : at + n].decode("utf-8", errors="replace"))
        at += n
    return out


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    return [x for item in data for x in _flatten(item)]


def _elements(shape: Any) -> int | None:
    """How many elements `shape` holds; None when it is not a list of sizes."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return None
    return math.prod(shape)


def input_texts(request: dict[str, Any], binary: bytes, name: str = "text") -> list[str]:
    """The BYTES input `name` as strings, from JSON `data` or from the binary part."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "inputs: a non-empty list is required")
    at = 0
    for tensor in inputs:
        if not isinstance(tensor, dict):
            raise ApiError(400, "inputs: each input must be an object")
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None and (type(size) is not int or size < 0):
            raise ApiError(400, "binary_data_size must be a non-negative integer")
        if tensor.get("name") != name:
            at += size or 0
            continue
        if tensor.get("datatype") != "BYTES":
            raise ApiError(400, f"input {name!r} must be BYTES, not {tensor.get('datatype')!r}")
        if size is not None:
            if at + size > len(binary):
                raise ApiError(400, f"input {name!r}: binary data shorter than {size} bytes")
            texts = _strings(binary[at : at + size])
        else:
            texts = _flatten(tensor.get("data"))
            if not all(isinstance(t, str) for t in texts):
                raise ApiError(400, f"input {name!r}: data must be strings")
        shape = tensor.get("shape")
        if _elements(shape) != len(texts):
            raise ApiError(400, f"input {name!r}: shape {shape} does not hold {len(texts)} items")
        return texts
    raise ApiError(400, f"input {name!r} is missing")


def _bytes_of(out: Output) -> bytes:
    if out.datatype == "BYTES":
        parts = []
        for v in out.data:
            b = v.encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return struct.pack(f"<{len(out.data)}{_PACK[out.datatype]}", *out.data)


def encode_response(
    header: dict[str, Any], outputs: dict[str, Output], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is binary."""
    listed, blobs = [], []
    for name, out in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": out.datatype, "shape": out.shape}
        if name in binary:
            blob = _bytes_of(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = out.data
        listed.append(entry)
    head = orjson.dumps({**header, "outputs": listed})
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
