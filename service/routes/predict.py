"""POST /predict and POST /generate (a JSON answer, or Server-Sent Events)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..departure import WatchedRoute
from ..deps import EngineDep, ReaderDep
from ..generate import events, plan
from ..schemas.common import ErrorBody
from ..schemas.predict import (
    GenerateRequest,
    GenerateResponse,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
)

router = APIRouter(tags=["inference"], route_class=WatchedRoute)

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
    summary="Continue a text word by word (greedy, or sampled with temperature, top_k, "
    "top_p, seed; n samples; stop sequences; streamed as Server-Sent Events on request)",
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "The answer, or its events"},
    },
)
async def generate(
    body: GenerateRequest, engine: EngineDep, _: ReaderDep, request: Request
) -> GenerateResponse | StreamingResponse:
    wants_events = "text/event-stream" in request.headers.get("accept", "")
    if not (body.stream or wants_events):
        return await engine.generate(body)
    checked = plan(engine, body)  # every check before the status line goes out
    return StreamingResponse(
        events(engine, checked),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
