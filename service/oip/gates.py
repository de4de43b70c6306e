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

import torch

from models.gates import GATE_KEYS
from models.lm import ModelConfig

from ..errors import ApiError
from ..inference import GateAnswer, GateQuery, InferenceEngine
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


async def answers(engine: InferenceEngine, ref: str, texts: list[str]) -> list[GateAnswer]:
    """`/gates`' answer for each text, all from one model version."""
    out: list[GateAnswer] = []
    total = 0
    limit = engine.settings.max_gate_values
    for text in texts:
        answer = await engine.gates(ref, text, _QUERY)
        ref = f"{answer.model}@{answer.version}"  # the rest from the same version
        total += sum(v.numel() for layer in answer.values.layers for v in layer.values())
        if total > limit:
            raise ApiError(
                413,
                f"over {limit} gate values in this batch (max_gate_values): "
                "send fewer or shorter texts",
            )
        out.append(answer)
    return out


def tensors(answers: list[GateAnswer], arch: str, names: list[str]) -> dict[str, Output]:
    """The asked gate outputs of `answers` (every unit, in order: the query names none),
    zero rows padding the shorter texts."""
    keys = output_names(arch)
    steps = max(len(a.tokens) for a in answers)
    first = answers[0].values.layers
    n_layers, n_units = len(first), next(iter(first[0].values())).shape[1]
    out: dict[str, Output] = {}
    for name in names:
        key = keys[name]
        block = torch.zeros(len(answers), steps, n_layers, n_units)
        for b, answer in enumerate(answers):
            rows = torch.stack([layer[key] for layer in answer.values.layers], dim=1)
            block[b, : rows.shape[0]] = rows
        shape = [len(answers), steps, n_layers, n_units]
        out[name] = Output("FP32", shape, block.reshape(-1).tolist())
    return out
