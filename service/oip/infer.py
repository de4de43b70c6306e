"""`/v2/models/{m}[/versions/{v}]/infer` over `InferenceEngine.predict`: the same batcher,
limits and metrics as `/predict`, which is also what its numbers must equal.

Input `text` (BYTES, shape [B]); outputs `next_words` (BYTES [B, k]), `next_word_probs`
(FP32 [B, k]), `num_tokens` (INT32 [B]) and, when named in `outputs`, the gate outputs of
`gates.py` (FP32 [B, T, layers, units]); request parameters `top_k` (default 5) and
`temperature` (default 1). Naming no outputs asks for `next_words` and `next_word_probs`.
With `sequence_id`, the request is one step of a sequence held as a session (`sequences.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from models.store import LoadedModel

from ..errors import ApiError
from ..inference import InferenceEngine
from ..registry import ModelRegistry
from ..schemas.predict import PredictBatchResponse, PredictRequest, PredictResponse
from ..schemas.sessions import FeedResponse
from . import gates
from .errors import invalid
from .sequences import Sequences
from .tensors import Output, encode_response, input_texts

PREDICTION_OUTPUTS = {"next_words": "BYTES", "next_word_probs": "FP32"}
DEFAULT_OUTPUTS = list(PREDICTION_OUTPUTS)
TOKENS_OUTPUT = "num_tokens"


def model_ref(name: str, version: str | None) -> str:
    if version is None:
        return name
    if not version.isdigit():
        raise ApiError(400, f"model version must be a positive integer, not {version!r}")
    return f"{name}@{int(version)}"


def metadata(registry: ModelRegistry, loaded: LoadedModel) -> dict[str, Any]:
    outputs = [
        {"name": name, "datatype": datatype, "shape": [-1, -1]}
        for name, datatype in PREDICTION_OUTPUTS.items()
    ]
    outputs.append({"name": TOKENS_OUTPUT, "datatype": "INT32", "shape": [-1]})
    return {
        "name": loaded.name,
        "versions": [str(v) for v in registry.versions(loaded.name)],
        "platform": f"gatehouse_{loaded.config.arch}",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs + gates.metadata(loaded.config),
    }


def _wanted(request: dict[str, Any], params: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Requested output names (the defaults when none are named), and which go binary.
    Names are checked against the model later, once its architecture is known."""
    all_binary = params.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None or asked == []:
        return DEFAULT_OUTPUTS, set(DEFAULT_OUTPUTS) if all_binary else set()
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ApiError(400, "outputs must be a list of objects")
    names, binary = [], set()
    for out in asked:
        name = out.get("name")
        if not isinstance(name, str):
            raise ApiError(400, "outputs: each output needs a name")
        names.append(name)
        out_params = out.get("parameters") or {}
        if all_binary or (isinstance(out_params, dict) and out_params.get("binary_data")):
            binary.add(name)
    return names, binary


def _check_names(engine: InferenceEngine, ref: str, names: list[str]) -> list[str]:
    """The gate outputs among `names`; 400 for a name this model does not have."""
    rest = [n for n in names if n not in PREDICTION_OUTPUTS and n != TOKENS_OUTPUT]
    if not rest:
        return []
    known = gates.output_names(engine.resolve(ref).config.arch)
    unknown = [n for n in rest if n not in known]
    if unknown:
        have = sorted([*PREDICTION_OUTPUTS, TOKENS_OUTPUT, *known])
        raise ApiError(400, f"unknown output {unknown[0]!r}: this model has {have}")
    return rest


async def _predictions(
    engine: InferenceEngine, ref: str, params: dict[str, Any], texts: list[str]
) -> list[PredictResponse]:
    try:
        req = PredictRequest(
            texts=texts,
            model=ref,
            top_k=params.get("top_k", 5),
            temperature=params.get("temperature", 1.0),
        )
    except ValidationError as e:
        raise invalid(e) from None
    answer = await engine.predict(req)
    assert isinstance(answer, PredictBatchResponse)
    return answer.results


def _prediction_tensors(rows: Sequence[PredictResponse | FeedResponse]) -> dict[str, Output]:
    shape = [len(rows), len(rows[0].predictions)]
    words = [p.word for r in rows for p in r.predictions]
    probs = [p.prob for r in rows for p in r.predictions]
    return {
        "next_words": Output("BYTES", shape, words),
        "next_word_probs": Output("FP32", shape, probs),
    }


async def infer(
    engine: InferenceEngine,
    sequences: Sequences,
    ref: str,
    request: dict[str, Any],
    binary: bytes,
) -> tuple[bytes, int | None]:
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "parameters must be an object")
    texts = input_texts(request, binary)
    names, binary_outputs = _wanted(request, params)
    gate_names = _check_names(engine, ref, names)
    in_sequence = params.get("sequence_id") not in (None, 0, "")
    if gate_names and in_sequence:
        raise ApiError(400, "gate outputs are not available on a sequence step")
    values: dict[str, Output] = {}
    served: tuple[str, int]
    token_counts: list[int] = []
    if not gate_names or any(n in PREDICTION_OUTPUTS for n in names):
        rows: Sequence[PredictResponse | FeedResponse]
        if in_sequence:
            rows = [await sequences.step(engine, ref, params, texts)]
        else:
            rows = await _predictions(engine, ref, params, texts)
        values.update(_prediction_tensors(rows))
        served = (rows[0].model, rows[0].version)
        ref = f"{served[0]}@{served[1]}"  # gates, if asked, from the same version
        token_counts = [len(r.tokens) for r in rows]
    if gate_names:
        answers = await gates.answers(engine, ref, texts)
        values.update(gates.tensors(answers, answers[0].arch, gate_names))
        served = (answers[0].model, answers[0].version)
        token_counts = [len(a.tokens) for a in answers]
    values[TOKENS_OUTPUT] = Output("INT32", [len(token_counts)], token_counts)
    header: dict[str, Any] = {"model_name": served[0], "model_version": str(served[1])}
    if isinstance(request.get("id"), str):
        header["id"] = request["id"]
    chosen = {name: values[name] for name in names}
    return encode_response(header, chosen, binary_outputs)
