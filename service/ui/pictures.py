"""`GET /gates.png` and `GET /gates.svg`: the page's heat maps, drawn by the server.

For notebooks, READMEs and bug reports. The query is `GET /gates`' (plus `gates` to pick
which), validated the same way, so every size limit and error of `/gates` applies.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

import service.ui.render as render
from models.gates import GATE_KEYS

from ..deps import EngineDep, ReaderDep
from ..errors import ApiError
from ..inference import GateQuery
from ..routes.gates import parse_indices
from ..routes.predict import ERRORS
from ..schemas.common import MODEL_REF_PATTERN
from ..schemas.gates import GatesRequest

router = APIRouter(tags=["inspection"])

_GATE_LIST = re.compile(r"^[a-z]{1,16}(,[a-z]{1,16}){0,15}$")
_ALL_GATES = sorted({g for keys in GATE_KEYS.values() for g in keys})


TextQ = Annotated[str, Query(examples=["i grew up in france . i speak fluent"])]
ModelQ = Annotated[str | None, Query(pattern=MODEL_REF_PATTERN, examples=["lstm"])]
LayersQ = Annotated[str | None, Query(description="e.g. 0,1", examples=["0"])]
UnitsQ = Annotated[str | None, Query(description="e.g. 0-63", examples=["0-31"])]
GatesQ = Annotated[
    str, Query(max_length=300, description="Which gates, e.g. forget,cell (default all)")
]


@dataclass
class PictureQuery:
    """`GET /gates`' query plus `gates`, shared by both picture formats."""

    text: TextQ
    model: ModelQ = None
    layers: LayersQ = None
    units: UnitsQ = None
    gates: GatesQ = ""


PictureDep = Annotated[PictureQuery, Depends()]


async def _picture(engine: Any, q: PictureQuery) -> tuple[list[render.Panel], dict[str, Any]]:
    text, model, layers, units, gates = q.text, q.model, q.layers, q.units, q.gates
    if gates and not _GATE_LIST.match(gates):
        raise ApiError(422, "gates: expected comma-separated names like forget,cell")
    wanted = [g for g in gates.split(",") if g] if gates else None
    unknown = sorted(set(wanted or []) - set(_ALL_GATES))
    if unknown:
        raise ApiError(422, f"gates: unknown {unknown}; known: {', '.join(_ALL_GATES)}")
    try:
        body = GatesRequest(
            text=text,
            model=model,
            layers=parse_indices(layers, "layers"),
            units=parse_indices(units, "units"),
        )
    except ValidationError as e:  # same 422 shape as GET /gates
        raise RequestValidationError(e.errors()) from e
    query = GateQuery(top_k=1, layers=body.layers, units=body.units)
    result = (await engine.gates(body.model, body.text, query)).to_dict()
    found = await asyncio.to_thread(render.panels, result, wanted)
    if not found:
        raise ApiError(422, f"gates: a {result['arch']} model has {GATE_KEYS[result['arch']]}")
    return found, result


_PNG = {200: {"content": {"image/png": {}}, "description": "The heat maps, one under another"}}
_SVG = {200: {"content": {"image/svg+xml": {}}, "description": "Labelled heat maps"}}


@router.get(
    "/gates.png",
    summary="Gate heat maps as a PNG (tokens across, units down, one panel per layer and gate)",
    response_class=Response,
    responses={**ERRORS, **_PNG},
)
async def gates_png(engine: EngineDep, _: ReaderDep, q: PictureDep) -> Response:
    found, _result = await _picture(engine, q)
    png = await asyncio.to_thread(render.to_png, found)
    return Response(png, media_type="image/png")


@router.get(
    "/gates.svg",
    summary="Gate heat maps as an SVG, labelled with the gates, layers, tokens and scales",
    response_class=Response,
    responses={**ERRORS, **_SVG},
)
async def gates_svg(engine: EngineDep, _: ReaderDep, q: PictureDep) -> Response:
    found, result = await _picture(engine, q)
    svg = await asyncio.to_thread(render.to_svg, found, result)
    return Response(svg, media_type="image/svg+xml")
