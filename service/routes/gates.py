"""GET and POST /gates: what every gate did on every token."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ..deps import EngineDep, ReaderDep
from ..errors import ApiError
from ..inference import GateQuery
from ..schemas.common import MODEL_REF_PATTERN
from ..schemas.gates import GatesRequest, GatesResponse
from .predict import ERRORS

router = APIRouter(tags=["inspection"])

_INDEX_LIST = re.compile(r"^\d{1,6}(-\d{1,6})?(,\d{1,6}(-\d{1,6})?){0,4095}$")


def parse_indices(raw: str | None, what: str, limit: int = 65536) -> list[int] | None:
    """`"0,3,8-11"` -> [0, 3, 8, 9, 10, 11]; a query-string friendly list with ranges."""
    if raw is None or raw == "":
        return None
    if not _INDEX_LIST.match(raw):
        raise ApiError(422, f"{what}: expected comma-separated indices or ranges like 0,3,8-11")
    out: list[int] = []
    for part in raw.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a or len(out) + b - a + 1 > limit:
            raise ApiError(422, f"{what}: bad or too large range {part!r}")
        out.extend(range(a, b + 1))
    return out


async def _gates(engine: EngineDep, body: GatesRequest) -> dict[str, Any]:
    query = GateQuery(body.top_k, body.layers, body.units, body.round, body.summary_only)
    return await engine.gates(body.model, body.text, query)


@router.post(
    "/gates",
    response_model=GatesResponse,
    summary="Per-token gate activations (JSON body)",
    responses=ERRORS,
)
async def post_gates(body: GatesRequest, engine: EngineDep, _: ReaderDep) -> dict[str, Any]:
    return await _gates(engine, body)


@router.get(
    "/gates",
    response_model=GatesResponse,
    summary="Per-token gate activations (query string)",
    responses=ERRORS,
)
async def get_gates(
    engine: EngineDep,
    _: ReaderDep,
    text: Annotated[str, Query(examples=["i grew up in france"])],
    model: Annotated[str | None, Query(pattern=MODEL_REF_PATTERN, examples=["lstm"])] = None,
    top_k: Annotated[int, Query(ge=1)] = 5,
    layers: Annotated[str | None, Query(description="e.g. 0,1", examples=["0"])] = None,
    units: Annotated[str | None, Query(description="e.g. 0-15,40", examples=["0-7"])] = None,
    round: Annotated[int | None, Query(ge=0, le=8)] = None,
    summary_only: bool = False,
) -> dict[str, Any]:
    try:
        body = GatesRequest(
            text=text,
            model=model,
            top_k=top_k,
            layers=parse_indices(layers, "layers"),
            units=parse_indices(units, "units"),
            round=round,
            summary_only=summary_only,
        )
    except ValidationError as e:  # same 422 shape as a bad JSON body
        raise RequestValidationError(e.errors()) from e
    return await _gates(engine, body)
