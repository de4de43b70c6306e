"""Gate outputs of `/v2/.../infer`: for each text, the values `GET /gates` reports, as FP32
tensors of shape [B, T, layers, units] (T: the longest text's token count).

One output per gate key of the architecture (`models.gates.GATE_KEYS`): the cell's state
and hidden state are `cell_state` and `hidden_state`, every other key `gates_<key>`, e.g.
`gates_forget` for an LSTM, `gates_reset` for a GRU. Row t of text b is the state after its
token t; a text shorter than T has zero rows after its last token, and the output
`num_tokens` (INT32 [B]) says how many rows of each text are real.

The values come from `InferenceEngine.gates`, one call per text, so they meet the same
limits as `/gates` (`max_gate_tokens`, `max_gate_values`); the whole batch is held to
`max_gate_values` as well.
"""

from __future__ import annotations

from typing import Any

from models.gates import GATE_KEYS
from models.lm import ModelConfig

from ..errors import ApiError
from ..inference import GateQuery, InferenceEngine
from .tensors import Output

_STATES = frozenset({"cell", "hidden"})
# Only the gate rows are used: one prediction keeps the rest of the answer small.
_QUERY = GateQuery(top_k=1)


def output_names(arch: str) -> dict[str, str]:
    """Output name -> the gate key it carries, for a model of `arch`."""
    return {(f"{k}_state" if k in _STATES else f"gates_{k}"): k for k in GATE_KEYS[arch]}


def metadata(cfg: ModelConfig) -> list[dict[str, Any]]:
    """The gate outputs' entries in the model metadata."""
    shape = [-1, -1, cfg.num_layers, cfg.hidden_size]
    return [{"name": name, "datatype": "FP32", "shape": shape} for name in output_names(cfg.arch)]


async def answers(engine: InferenceEngine, ref: str, texts: list[str]) -> list[dict[str, Any]]:
    """`/gates`' answer for each text, all from one model version."""
    out: list[dict[str, Any]] = []
    total = 0
    limit = engine.settings.max_gate_values
    for text in texts:
        answer = await engine.gates(ref, text, _QUERY)
        ref = f"{answer['model']}@{answer['version']}"  # the rest from the same version
        layers = answer["layers"]
        total += sum(
            len(rows) * len(rows[0]) for layer in layers for rows in layer["gates"].values()
        )
        if total > limit:
            raise ApiError(
                413,
                f"over {limit} gate values in this batch (max_gate_values): "
                "send fewer or shorter texts",
            )
        out.append(answer)
    return out


def tensors(answers: list[dict[str, Any]], arch: str, names: list[str]) -> dict[str, Output]:
    """The asked gate outputs of `answers`, zero rows padding the shorter texts."""
    keys = output_names(arch)
    steps = max(len(a["tokens"]) for a in answers)
    first = answers[0]["layers"]
    n_layers, n_units = len(first), len(next(iter(first[0]["gates"].values()))[0])
    pad = [0.0] * n_units
    out: dict[str, Output] = {}
    for name in names:
        key = keys[name]
        flat: list[float] = []
        for answer in answers:
            per_layer = [layer["gates"][key] for layer in answer["layers"]]
            for t in range(steps):
                for rows in per_layer:
                    flat.extend(rows[t] if t < len(rows) else pad)
        out[name] = Output("FP32", [len(answers), steps, n_layers, n_units], flat)
    return out
