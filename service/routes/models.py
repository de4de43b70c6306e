"""GET /models, GET /models/{name}, and the files of a version for download."""

from __future__ import annotations

import asyncio
from pathlib import Path as FsPath
from typing import Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse

from models.store import (
    META_FILE,
    NAME_RE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    LoadedModel,
    StoreError,
    parse_ref,
    read_meta,
)

from ..auth import require_reader
from ..deps import RegistryDep
from ..errors import ApiError
from ..redact import version_message
from ..registry import ModelRegistry
from ..schemas.common import ErrorBody
from ..schemas.models import ModelDetail, ModelList, VersionInfo

router = APIRouter(tags=["models"], dependencies=[Depends(require_reader)])


def model_info(registry: ModelRegistry, loaded: LoadedModel) -> dict[str, Any]:
    cfg, meta = loaded.config, loaded.meta
    return {
        "name": loaded.name,
        "arch": cfg.arch,
        "version": loaded.version,
        "default": registry.is_default(loaded.name),
        "device": registry.device,
        "params": loaded.model.num_params(),
        "vocab_size": cfg.vocab_size,
        "embedding_size": cfg.embedding_size,
        "hidden_size": cfg.hidden_size,
        "num_layers": cfg.num_layers,
        "tied": cfg.tied,
        "dropout": cfg.dropout,
        "metrics": meta.get("metrics") or {},
        "created_at": meta.get("created_at"),
    }


@router.get("/models", response_model=ModelList, summary="Every served model (latest version)")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    failed = [
        {"name": name, "versions": [{"version": v, "error": e} for v, e in reasons]}
        for name, reasons in registry.broken_names().items()
    ]
    return {"models": [model_info(registry, m) for m in registry.loaded()], "failed": failed}


def _versions(registry: ModelRegistry, name: str, served: int) -> list[dict[str, Any]]:
    out = []
    for version in registry.versions(name):
        entry: dict[str, Any] = {"version": version, "loaded": version == served}
        try:
            meta = read_meta(registry.model_dir, name, version)
            entry["created_at"] = meta.get("created_at")
            entry["metrics"] = meta.get("metrics") or {}
            entry["history"] = meta.get("history") or []
        except StoreError as e:
            entry["error"] = version_message(str(e), registry.model_dir, name, version)
        if registry.failure(name, version):
            entry["error"] = registry.failure(name, version)
        out.append(entry)
    return out


@router.get(
    "/models/{name}",
    response_model=ModelDetail,
    summary="One model, with all its versions",
    responses={
        404: {"model": ErrorBody, "description": "Unknown model"},
        503: {"model": ErrorBody, "description": "No version of it loads (`detail`: why each)"},
    },
)
async def get_model(
    registry: RegistryDep, name: str = Path(max_length=64, examples=["lstm"])
) -> dict[str, Any]:
    if not NAME_RE.match(name):
        raise ApiError(404, f"unknown model {name!r}")
    loaded = registry.resolve(name)
    versions = await asyncio.to_thread(_versions, registry, name, loaded.version)
    return {**model_info(registry, loaded), "versions": [VersionInfo(**v) for v in versions]}


# What each downloadable part of a version is called on disk, and its media type.
_VERSION_FILES = {
    "weights": (WEIGHTS_FILE, "application/octet-stream"),
    "meta": (META_FILE, "application/json"),
    "vocab": (VOCAB_FILE, "application/json"),
}


@router.get(
    "/models/{name}/versions/{version}/files/{part}",
    summary="Download one file of a stored version (weights, meta or vocab)",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}}},
        401: {"model": ErrorBody, "description": "Inference is protected and the key is wrong"},
        404: {"model": ErrorBody, "description": "Unknown model, version or file"},
    },
)
async def download_version_file(
    registry: RegistryDep,
    name: str = Path(max_length=64, examples=["lstm"]),
    version: str = Path(max_length=9, examples=["1"]),
    part: str = Path(max_length=16, examples=["weights", "meta", "vocab"]),
) -> FileResponse:
    if part not in _VERSION_FILES:
        raise ApiError(404, f"unknown file {part!r}: one of {sorted(_VERSION_FILES)}")
    try:
        ref_name, number = parse_ref(f"{name}@{version}")
    except ValueError:
        raise ApiError(404, f"unknown model version {name!r}@{version!r}") from None
    filename, media_type = _VERSION_FILES[part]
    path = FsPath(registry.model_dir) / ref_name / str(number) / filename
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(404, f"no version {number} of model {ref_name!r}")
    return FileResponse(
        path,
        media_type=media_type,
        filename=f"{ref_name}-v{number}-{filename}",
        headers={"Cache-Control": "no-cache"},
    )
