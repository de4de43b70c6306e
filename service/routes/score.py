"""POST /score: the log-probability of each word of a given text, and its perplexity."""

from __future__ import annotations

from fastapi import APIRouter

from ..departure import WatchedRoute
from ..deps import EngineDep, ReaderDep
from ..schemas.score import ScoreBatchResponse, ScoreRequest, ScoreResponse
from .predict import ERRORS

router = APIRouter(tags=["inference"], route_class=WatchedRoute)


@router.post(
    "/score",
    response_model=ScoreResponse | ScoreBatchResponse,
    summary="Per-word log-probabilities and perplexity of a text, or of a batch of texts",
    responses=ERRORS,
)
async def score(
    body: ScoreRequest, engine: EngineDep, _: ReaderDep
) -> ScoreResponse | ScoreBatchResponse:
    return await engine.score(body)
