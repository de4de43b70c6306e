"""`/v2/models/{m}[/versions/{v}]/infer` over `InferenceEngine.predict`: the same batcher,
limits and metrics as `/predict`, which is also what its numbers must equal.

Input `text` (BYTES, shape [B]); outputs `next_words` (BYTES [B, k]) and `next_word_probs`
(FP32 [B, k]); request parameters `top_k` (default 5) and `temperature` (default 1).
With `sequence_id`, the request is one step of a sequence held as a session (`sequences.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from models.store import LoadedModel

from ..errors import ApiError
from ..inference import InferenceEngine
from ..registry import ModelRegistry
from ..schemas.predict import PredictBatchResponse, PredictRequest, PredictResponse
from ..schemas.sessions import FeedResponse
from .errors import invalid
from .sequences import Sequences
from .tensors import encode_response, input_texts

OUTPUTS = {"next_words": "BYTES", "next_word_probs": "FP32"}


def model_ref(name: str, version: str | None) -> str:
    if version is None:
        return name
    if not version.isdigit():
        raise ApiError(400, f"model version must be a positive integer, not {version!r}")
    return f"{name}@{int(version)}"


def metadata(registry: ModelRegistry, loaded: LoadedModel) -> dict[str, Any]:
    return {
        "name": loaded.name,
        "versions": [str(v) for v in registry.versions(loaded.name)],
        "platform": f"gatehouse_{loaded.config.arch}",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": [-1, -1]}
            for name, datatype in OUTPUTS.items()
        ],
    }


def _wanted(request: dict[str, Any]) -> tuple[list[str], set[str]]:
    """Requested outputs (all when none are named) and which of them go binary."""
    params = request.get("parameters") or {}
    all_binary = isinstance(params, dict) and params.get("binary_data_output") is True
    asked = request.get("outputs")
    if asked is None:
        names = list(OUTPUTS)
        return names, set(names) if all_binary else set()
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ApiError(400, "outputs must be a list of objects")
    names, binary = [], set()
    for out in asked:
        name = out.get("name")
        if name not in OUTPUTS:
            raise ApiError(400, f"unknown output {name!r}: this model has {sorted(OUTPUTS)}")
        names.append(name)
        out_params = out.get("parameters") or {}
        if all_binary or (isinstance(out_params, dict) and out_params.get("binary_data")):
            binary.add(name)
    return names, binary


async def infer(
    engine: InferenceEngine,
    sequences: Sequences,
    ref: str,
    request: dict[str, Any],
    binary: bytes,
) -> tuple[bytes, int | None]:
    texts = input_texts(request, binary)
    names, binary_outputs = _wanted(request)
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "parameters must be an object")
    rows: Sequence[PredictResponse | FeedResponse]
    if params.get("sequence_id") not in (None, 0, ""):
        rows = [await sequences.step(engine, ref, params, texts)]
    else:
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
        rows = answer.results
    words = np.array([[p.word for p in r.predictions] for r in rows], dtype=object)
    probs = np.array([[p.prob for p in r.predictions] for r in rows], dtype=np.float32)
    values = {"next_words": words, "next_word_probs": probs}
    header: dict[str, Any] = {"model_name": rows[0].model, "model_version": str(rows[0].version)}
    if isinstance(request.get("id"), str):
        header["id"] = request["id"]
    chosen = {name: (OUTPUTS[name], values[name]) for name in names}
    return encode_response(header, chosen, binary_outputs)
