"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import RegistryDep
from ..errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: 200 while the process runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: 200 once a model is loaded, else 503",
    responses={503: {"description": "No model loaded yet (e.g. still training the defaults)"}},
)
async def readyz(registry: RegistryDep) -> dict[str, object]:
    if not registry.ready:
        raise ApiError(503, "no model loaded yet", headers={"Retry-After": "5"})
    return {"status": "ready", "models": [m.name for m in registry.loaded()]}
