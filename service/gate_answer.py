"""The `/gates` answer: computed on the inference thread, held compactly, encoded in chunks.

A `/gates` answer of `max_gate_values` floats is ~38 MB of JSON but only 4 bytes a value as
float32, and a unit list may repeat units. So the answer keeps each distinct unit's values once,
as float32 tensors (`GateValues`), and `GateAnswer.chunks()` writes the JSON a block of rows at
a time: a client that does not read holds its answer's float32 values and one chunk of text,
never the whole text. The bytes are those of `orjson.dumps(answer.to_dict())`, the one JSON
encoding every other route uses, so the wire format does not depend on how it was produced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import torch
from torch import Tensor

from models import gates as gate_inspection
from models.lm import RNNLM

# Values per JSON chunk: ~80 KB of text at full precision.
CHUNK_VALUES = 4096


@dataclass(frozen=True, slots=True)
class GateQuery:
    """What `/gates` asks of a text: the transport-neutral form of its request body."""

    top_k: int = 5
    layers: list[int] | None = None  # None: every layer
    units: list[int] | None = None  # None: every unit
    decimals: int | None = None  # round the gate values; None: full precision
    summary_only: bool = False


@dataclass(slots=True)
class GateRow:
    """A `/gates` trace as the batcher carries it (a heavy item: it runs alone)."""

    ids: Sequence[int]
    query: GateQuery


@dataclass(frozen=True, slots=True)
class GateValues:
    """The tensor side of an answer. `layers[i][key]` is [T, distinct units] float32 on the
    CPU; `columns` maps each asked unit to its column there (None: every unit, in order)."""

    layer_indices: list[int]
    layers: list[dict[str, Tensor]]
    columns: Tensor | None
    summary: dict[str, Any]
    top_ids: list[int]
    top_probs: list[float]

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for layer in self.layers for v in layer.values())


def _columns(v: Tensor, index: Tensor | None) -> Tensor:
    return v if index is None else v.index_select(1, index.to(v.device))


def run_gates(model: RNNLM, row: GateRow) -> GateValues:
    """Inference thread: the exact trace of `row.ids`, cut down to the layers and units asked.
    The summary describes exactly the rows returned (same layers, same units, repeats too)."""
    query = row.query
    with torch.inference_mode():
        trace = gate_inspection.inspect(model, torch.tensor(list(row.ids)))
    keep = sorted(set(query.layers)) if query.layers else list(range(len(trace.layers)))
    asked = torch.tensor(query.units, dtype=torch.long) if query.units else None
    distinct, columns = (None, None) if asked is None else torch.unique(asked, return_inverse=True)
    chosen: list[dict[str, Tensor]] = []
    held: list[dict[str, Tensor]] = []
    for k in keep:
        states = trace.layers[k]
        chosen.append({key: _columns(v, asked) for key, v in states.items()})
        if not query.summary_only:
            held.append(
                {key: _columns(v, distinct).float().cpu().contiguous() for key, v in states.items()}
            )
    sliced = gate_inspection.GateTrace(arch=trace.arch, layers=chosen, logits=trace.logits)
    summary = gate_inspection.summary(sliced)
    for entry, k in zip(summary["layers"], keep, strict=True):
        entry["layer"] = k
    probs = torch.softmax(trace.logits.float(), dim=-1)
    values, indices = torch.topk(probs, min(query.top_k, probs.shape[-1]))
    return GateValues(
        layer_indices=keep if not query.summary_only else [],
        layers=held,
        columns=columns,
        summary=summary,
        top_ids=indices.tolist(),
        top_probs=values.tolist(),
    )


@dataclass(frozen=True, slots=True)
class GateAnswer:
    """The typed `/gates` response (`schemas.gates.GatesResponse` is its JSON schema)."""

    model: str
    version: int
    arch: str
    tokens: list[str]
    unknown: list[str]
    units: list[int] | None
    predictions: list[dict[str, Any]]  # [{"word", "prob"}], most probable first
    values: GateValues
    decimals: int | None
    # Told the seconds each chunk took to encode: the engine counts them against /gates' share.
    on_encoded: Callable[[float], None] | None = field(default=None, compare=False, repr=False)

    def _head(self) -> bytes:
        head = {
            "model": self.model,
            "version": self.version,
            "arch": self.arch,
            "tokens": self.tokens,
            "unknown": self.unknown,
            "units": self.units,
        }
        return orjson.dumps(head)[:-1] + b',"layers":['

    def _tail(self) -> bytes:
        summary = orjson.dumps(self.values.summary)
        predictions = orjson.dumps(self.predictions)
        return b'],"summary":' + summary + b',"predictions":' + predictions + b"}"

    def _rows(self, v: Tensor) -> Tensor:
        """float64 before rounding: a rounded float32 prints as 0.492000013..."""
        if self.values.columns is not None:
            v = v.index_select(1, self.values.columns)
        v = v.double()
        if self.decimals is not None:
            v = torch.round(v, decimals=self.decimals)
        return v

    def chunks(self, chunk_values: int = CHUNK_VALUES) -> Iterator[bytes]:
        """The JSON text, a block of rows at a time; only one block is ever encoded at once."""
        encoded = self._encode(chunk_values)
        while True:
            started = time.perf_counter()
            chunk = next(encoded, None)
            if self.on_encoded is not None:
                self.on_encoded(time.perf_counter() - started)
            if chunk is None:
                return
            yield chunk

    def _encode(self, chunk_values: int) -> Iterator[bytes]:
        yield self._head()
        values = self.values
        for i, (k, gates) in enumerate(zip(values.layer_indices, values.layers, strict=True)):
            yield (b"," if i else b"") + b'{"layer":' + str(k).encode() + b',"gates":{'
            for j, (key, v) in enumerate(gates.items()):
                yield (b"," if j else b"") + orjson.dumps(key) + b":["
                width = len(self.units) if self.units is not None else v.shape[1]
                step = max(1, chunk_values // max(1, width))
                for start in range(0, v.shape[0], step):
                    block = self._rows(v[start : start + step]).numpy()
                    text = orjson.dumps(block, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
                    yield (b"," if start else b"") + text
                yield b"]"
            yield b"}}"
        yield self._tail()

    def to_dict(self) -> dict[str, Any]:
        """The same answer as plain Python values (every gate value materialised)."""
        layers = [
            {"layer": k, "gates": {key: self._rows(v).tolist() for key, v in gates.items()}}
            for k, gates in zip(self.values.layer_indices, self.values.layers, strict=True)
        ]
        return {
            "model": self.model,
            "version": self.version,
            "arch": self.arch,
            "tokens": self.tokens,
            "unknown": self.unknown,
            "units": self.units,
            "layers": layers,
            "summary": self.values.summary,
            "predictions": self.predictions,
        }
