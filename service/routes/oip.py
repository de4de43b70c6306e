"""The Open Inference Protocol v2 (KServe / Triton HTTP): server and model metadata, health,
readiness, `infer` (JSON or the binary tensor extension) and the generate extension.
Errors: `{"error": "..."}`."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from ..auth import admit_new_session, client_id, require_reader
from ..departure import WatchedRoute
from ..deps import EngineDep, ReaderDep, RegistryDep
from ..errors import ApiError
from ..oip import generate as oip_generate
from ..oip.infer import infer as run_infer
from ..oip.infer import metadata, model_ref
from ..oip.sequences import SequenceMap, Sequences
from ..oip.tensors import HEADER, parse_body

router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=WatchedRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": 'Invalid request: `{"error": "..."}`'},
    404: {"description": 'Unknown model or version: `{"error": "..."}`'},
    503: {"description": 'No model loaded yet, or overloaded: `{"error": "..."}`'},
}


def _sequences(request: Request) -> Sequences:
    """This client's view of the app's one map of OIP sequences to sessions."""
    state = request.app.state
    if not hasattr(state, "oip_sequences"):
        state.oip_sequences = SequenceMap()
    return state.oip_sequences.for_client(client_id(request), lambda: admit_new_session(request))


def _path_parameters(*names: str) -> dict[str, Any]:
    """OpenAPI entries for path parameters the route reads from `request.path_params`."""
    return {
        "parameters": [
            {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
        ]
    }


# First in the router, the plain path first (the last decorator registers first): routes are
# matched in order, and this is the hot one. The path parameters come from
# `request.path_params`, not the signature: FastAPI's per-parameter validation was a
# measurable share of each request (see docs/benchmarks/protocols.md).
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Next-word distributions and gates (OIP infer)",
    responses=ERRORS,
    openapi_extra=_path_parameters("name", "version"),
)
@router.post(
    "/models/{name}/infer",
    summary="Next-word distributions and gates (OIP infer)",
    responses=ERRORS,
    openapi_extra=_path_parameters("name"),
)
async def infer(request: Request, engine: EngineDep, _: ReaderDep) -> Response:
    header, binary = parse_body(await request.body(), request.headers.get(HEADER))
    path = request.path_params
    ref = model_ref(path["name"], path.get("version"))
    body, header_length = await run_infer(engine, _sequences(request), ref, header, binary)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": "gatehouse",
        "version": request.app.version,
        "extensions": ["binary_tensor_data"],
    }


@router.get("/health/live", summary="Liveness: 200 while the process runs")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: 200 once a model is loaded", responses=ERRORS)
async def ready(registry: RegistryDep) -> dict[str, bool]:
    if not registry.ready:
        raise ApiError(503, "no model is loaded yet", headers={"Retry-After": "5"})
    return {"ready": True}


@router.get(
    "/models/{name}",
    summary="Model metadata",
    responses=ERRORS,
    dependencies=[Depends(require_reader)],
)
@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata",
    responses=ERRORS,
    dependencies=[Depends(require_reader)],
)
async def model_metadata(
    name: str, engine: EngineDep, registry: RegistryDep, version: str | None = None
) -> dict[str, Any]:
    return metadata(registry, engine.resolve(model_ref(name, version)))


@router.get("/models/{name}/ready", summary="Model readiness", responses=ERRORS)
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness", responses=ERRORS)
async def model_ready(name: str, engine: EngineDep, version: str | None = None) -> dict[str, Any]:
    loaded = engine.resolve(model_ref(name, version))
    return {"name": loaded.name, "ready": True}


async def _json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"the request is not JSON: {e}") from None


@router.post("/models/{name}/generate", summary="Generate extension", responses=ERRORS)
@router.post(
    "/models/{name}/versions/{version}/generate", summary="Generate extension", responses=ERRORS
)
async def generate(
    name: str, request: Request, engine: EngineDep, _: ReaderDep, version: str | None = None
) -> dict[str, Any]:
    checked = oip_generate.plan(engine, model_ref(name, version), await _json(request))
    return await oip_generate.run(engine, checked)


@router.post(
    "/models/{name}/generate_stream", summary="Generate extension, streamed", responses=ERRORS
)
@router.post(
    "/models/{name}/versions/{version}/generate_stream",
    summary="Generate extension, streamed",
    responses=ERRORS,
)
async def generate_stream(
    name: str, request: Request, engine: EngineDep, _: ReaderDep, version: str | None = None
) -> StreamingResponse:
    checked = oip_generate.plan(engine, model_ref(name, version), await _json(request))
    return StreamingResponse(
        oip_generate.events(engine, checked),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
