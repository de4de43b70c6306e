"""POST /predict and POST /generate."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import EngineDep, ReaderDep
from ..schemas.common import ErrorBody
from ..schemas.predict import (
    GenerateRequest,
    GenerateResponse,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
)

router = APIRouter(tags=["inference"])

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed body (not UTF-8 JSON)"},
    404: {"model": ErrorBody, "description": "Unknown model or version"},
    413: {"model": ErrorBody, "description": "Over a size limit (body, tokens, texts)"},
    415: {"model": ErrorBody, "description": "Body is not application/json"},
    422: {"model": ErrorBody, "description": "Invalid request"},
    503: {"model": ErrorBody, "description": "No model loaded yet, or overloaded"},
}


@router.post(
    "/predict",
    response_model=PredictResponse | PredictBatchResponse,
    summary="Next-word distribution for a text, or for a batch of texts",
    responses=ERRORS,
)
async def predict(
    body: PredictRequest, engine: EngineDep, _: ReaderDep
) -> PredictResponse | PredictBatchResponse:
    return await engine.predict(body)


@router.post(
    "/generate",
    response_model=GenerateResponse,
    summary="Continue a text word by word (greedy, or sampled with temperature/top_k/seed)",
    responses=ERRORS,
)
async def generate(body: GenerateRequest, engine: EngineDep, _: ReaderDep) -> GenerateResponse:
    return await engine.generate(body)
