"""Gate heat maps as PNG or SVG, from a `/gates` answer; numpy and zlib only.

A PNG is a few lines of zlib and CRC framing, so the server needs no plotting library at
run time (matplotlib stays an optional extra). Text is drawn only in the SVG form, which
labels an embedded PNG of each panel with the gate, the layer, the tokens and the scale.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np

# 0..1 gates: a perceptual sequential ramp (dark = closed, bright = open).
_SEQUENTIAL = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
# Signed quantities: blue below zero, near-white at zero, red above.
_DIVERGING = [(33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43)]
UNIT_GATES = {"input", "forget", "output", "reset", "update"}


def kind_of(gate: str) -> str:
    """`unit` (sigmoid, 0..1), `tanh` (-1..1) or `cell` (unbounded, scaled symmetrically)."""
    if gate in UNIT_GATES:
        return "unit"
    return "cell" if gate == "cell" else "tanh"


def scale_of(gate: str, values: np.ndarray) -> tuple[float, float]:
    kind = kind_of(gate)
    if kind == "unit":
        return 0.0, 1.0
    if kind == "tanh":
        return -1.0, 1.0
    # The 99th percentile of |c|, not the maximum: a few large cells would wash out the rest.
    top = float(np.quantile(np.abs(values), 0.99)) if values.size else 1.0
    top = top if np.isfinite(top) and top > 1e-6 else 1.0
    return -top, top


def _lut(stops: list[tuple[int, int, int]], n: int = 256) -> np.ndarray:
    xs = np.linspace(0, 1, len(stops))
    grid = np.linspace(0, 1, n)
    cols = np.array(stops, dtype=np.float64)
    return np.stack([np.interp(grid, xs, cols[:, c]) for c in range(3)], 1).round().astype(np.uint8)


_LUTS = {"unit": _lut(_SEQUENTIAL), "tanh": _lut(_DIVERGING), "cell": _lut(_DIVERGING)}


def colour(values: np.ndarray, gate: str, lo: float, hi: float) -> np.ndarray:
    """[T, H] values -> [H, T, 3] pixels: tokens across, units down."""
    pos = (np.nan_to_num(values.T, nan=lo) - lo) / (hi - lo)
    idx = np.clip((pos * 255).round(), 0, 255).astype(np.intp)
    return _LUTS[kind_of(gate)][idx]


def encode_png(rgb: np.ndarray) -> bytes:
    """An RGB8 image [rows, cols, 3] as PNG bytes (filter 0 on every row)."""
    rows, cols, _ = rgb.shape
    raw = np.zeros((rows, cols * 3 + 1), dtype=np.uint8)
    raw[:, 1:] = rgb.reshape(rows, cols * 3)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", cols, rows, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


@dataclass
class Panel:
    layer: int
    gate: str
    lo: float
    hi: float
    rgb: np.ndarray  # [H, T, 3], one pixel per cell


def panels(result: dict[str, Any], gates: list[str] | None = None) -> list[Panel]:
    out = []
    for layer in result["layers"]:
        for gate, rows in layer["gates"].items():
            if gates and gate not in gates:
                continue
            values = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
            lo, hi = scale_of(gate, values)
            out.append(Panel(layer["layer"], gate, lo, hi, colour(values, gate, lo, hi)))
    return out


def cell_size(tokens: int, units: int) -> tuple[int, int]:
    """Whole pixels per token and per unit: small maps are blown up, large ones stay 1:1."""
    return max(1, min(24, 960 // max(tokens, 1))), max(1, min(12, 480 // max(units, 1)))


def _scaled(rgb: np.ndarray, sx: int, sy: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, sy, axis=0), sx, axis=1)


_GAP = 8


def to_png(found: list[Panel]) -> bytes:
    """Every panel stacked top to bottom (in the answer's order), white between them."""
    units, tokens = found[0].rgb.shape[:2]
    sx, sy = cell_size(tokens, units)
    blocks = []
    for i, p in enumerate(found):
        if i:
            blocks.append(np.full((_GAP, tokens * sx, 3), 255, dtype=np.uint8))
        blocks.append(_scaled(p.rgb, sx, sy))
    return encode_png(np.concatenate(blocks, axis=0))


def to_svg(found: list[Panel], result: dict[str, Any]) -> str:
    """Labelled panels: title, gate and layer, scale, tokens along the bottom of each."""
    tokens = result["tokens"]
    units, n_tok = found[0].rgb.shape[:2]
    ids = result.get("units") or list(range(units))  # the unit each row stands for
    sx, sy = cell_size(n_tok, units)
    width, height = n_tok * sx, units * sy
    left, label_h, tok_h = 48, 22, 70 if n_tok <= 80 else 16
    y = 28
    body = [
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">'
        f"{escape(result['model'])} v{result['version']} ({escape(result['arch'])})</text>"
    ]
    for p in found:
        png = base64.b64encode(to_png([p])).decode()
        body.append(
            f'<text x="{left}" y="{y + 15}" font-size="12">layer {p.layer} · {escape(p.gate)}'
            f" · scale {p.lo:.3g} … {p.hi:.3g}</text>"
        )
        y += label_h
        body.append(
            f'<image x="{left}" y="{y}" width="{width}" height="{height}" '
            f'style="image-rendering:pixelated" href="data:image/png;base64,{png}"/>'
        )
        body.append(
            f'<text x="{left - 4}" y="{y + 10}" font-size="9" text-anchor="end">{ids[0]}</text>'
        )
        body.append(
            f'<text x="{left - 4}" y="{y + height}" font-size="9" text-anchor="end">'
            f"{ids[-1]}</text>"
        )
        y += height
        if n_tok <= 80:  # one label a token, turned to fit
            for t, tok in enumerate(tokens):
                cx = left + t * sx + sx / 2
                body.append(
                    f'<text font-size="9" text-anchor="end" '
                    f'transform="translate({cx:.1f},{y + 6}) rotate(-60)">{escape(tok)}</text>'
                )
        y += tok_h
    total_w = left + width + 16
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{y}" '
        f'viewBox="0 0 {total_w} {y}" font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="white"/>{"".join(body)}</svg>'
    )
