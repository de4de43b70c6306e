"""POST /train, GET /jobs, GET /jobs/{id}, DELETE /jobs/{id}, GET /jobs/{id}/events, GET /datasets.

POST /train reads its own body: it takes JSON or a multipart upload on one path, and a JSON
corpus may be far larger than other JSON bodies (the size guard allows it on this path).
"""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from ..auth import require_reader
from ..deps import AdminDep, JobsDep, SettingsDep
from ..errors import ApiError
from ..jobs import datasets, intake
from ..jobs.manager import JobManager
from ..schemas.common import ErrorBody
from ..schemas.jobs import (
    JOB_ID_PATTERN,
    DatasetList,
    Job,
    JobList,
    JobStatusName,
    TrainAccepted,
    TrainRequest,
)

router = APIRouter(tags=["training"], dependencies=[Depends(require_reader)])
_JOB_ID = re.compile(JOB_ID_PATTERN)
_MAX_FORM_FIELDS = 32


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's `#/$defs/...` refs inlined: inside an OpenAPI document they would dangle."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


_UPLOAD_SCHEMA = {
    "type": "object",
    "required": ["file", "name", "arch"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "The corpus (UTF-8 text)."},
        "name": {"type": "string"},
        "arch": {"type": "string", "enum": ["rnn", "lstm", "gru"]},
    },
    "additionalProperties": {"type": "string"},
    "description": "The corpus as a file; every other field as in the JSON form, as text.",
}
_TRAIN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_refs(TrainRequest.model_json_schema())},
            "multipart/form-data": {"schema": _UPLOAD_SCHEMA},
        },
    }
}


def _check_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ApiError(404, f"unknown job {job_id!r}")
    return job_id


async def _from_json(request: Request, jobs: JobManager, settings: Any) -> dict[str, Any]:
    raw = await request.body()
    try:
        # Off the event loop: a corpus may make this body tens of megabytes.
        data = await asyncio.to_thread(orjson.loads, raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from e
    req = intake.parse_json(data, jobs.bounds)
    hp = intake.check_request(req, jobs.bounds, memory_budget_mb=settings.train_memory_budget_mb)
    corpus = req.corpus
    assert corpus is not None  # parse_json refuses a request without one
    return await jobs.submit(
        req.name,
        req.arch,
        req.model_dump(exclude={"corpus"}, exclude_none=True),
        hp,
        lambda staging: intake.stage_json_corpus(staging, corpus, settings.data_dir),
    )


async def _from_upload(request: Request, jobs: JobManager) -> dict[str, Any]:
    await jobs.check_capacity()  # before the upload is read
    form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
    try:
        req, opts, upload = intake.parse_form(form.multi_items(), jobs.bounds)
        hp = intake.check_request(
            req, jobs.bounds, upload=opts, memory_budget_mb=jobs.settings.train_memory_budget_mb
        )
        return await jobs.submit(
            req.name,
            req.arch,
            req.model_dump(exclude={"corpus"}, exclude_none=True),
            hp,
            lambda staging: intake.stage_upload(staging, upload, opts),
        )
    finally:
        await form.close()


@router.post(
    "/train",
    status_code=202,
    response_model=TrainAccepted,
    summary="Start a training job (JSON with a corpus source, or a multipart file upload)",
    openapi_extra=_TRAIN_BODY,
    responses={
        400: {"model": ErrorBody, "description": "Malformed JSON or multipart body"},
        401: {"model": ErrorBody, "description": "Missing or wrong API key"},
        413: {"model": ErrorBody, "description": "Corpus over the size limit"},
        415: {"model": ErrorBody, "description": "Neither JSON nor multipart"},
        422: {"model": ErrorBody, "description": "Invalid or out-of-range field (range given)"},
        429: {"model": ErrorBody, "description": "Job queue full (see Retry-After)"},
        503: {"model": ErrorBody, "description": "Shutting down, or jobs run by another server"},
    },
)
async def train(
    request: Request, response: Response, jobs: JobsDep, settings: SettingsDep, _: AdminDep
) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        job = await _from_upload(request, jobs)
    elif ctype in ("", "application/json") or ctype.endswith("+json"):
        job = await _from_json(request, jobs, settings)
    else:
        raise ApiError(415, f"content-type {ctype!r}: send application/json or multipart/form-data")
    response.headers["Location"] = f"/jobs/{job['job_id']}"
    return {"job_id": job["job_id"], "status": "queued"}


@router.get("/jobs", response_model=JobList, summary="Jobs, newest first")
async def list_jobs(
    jobs: JobsDep,
    status: Annotated[
        list[JobStatusName] | None, Query(description="Only these states (repeatable).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"jobs": await jobs.list(list(status) if status else None, limit)}


@router.get(
    "/jobs/{job_id}",
    response_model=Job,
    summary="A job's state, progress, metrics, per-epoch history and resulting model",
    responses={404: {"model": ErrorBody, "description": "Unknown job"}},
)
async def get_job(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    found = await jobs.get(_check_id(job_id))
    if found is None:
        raise ApiError(404, f"unknown job {job_id!r}")
    return found


@router.delete(
    "/jobs/{job_id}",
    response_model=Job,
    summary="Cancel a queued or running job; answers once it has stopped",
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong API key"},
        404: {"model": ErrorBody, "description": "Unknown job"},
        409: {"model": ErrorBody, "description": "The job already ended"},
    },
)
async def cancel_job(job_id: str, jobs: JobsDep, _: AdminDep) -> dict[str, Any]:
    return await jobs.cancel(_check_id(job_id))


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-Sent Events: status, progress, epoch; `end` when the job ends",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream"},
        404: {"model": ErrorBody, "description": "Unknown job"},
    },
)
async def job_events(job_id: str, jobs: JobsDep) -> StreamingResponse:
    if await jobs.get(_check_id(job_id)) is None:
        raise ApiError(404, f"unknown job {job_id!r}")
    return StreamingResponse(
        jobs.stream(job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/datasets", response_model=DatasetList, summary="Datasets POST /train may name")
async def list_datasets(settings: SettingsDep) -> dict[str, Any]:
    found = await asyncio.to_thread(datasets.list_datasets, settings.data_dir)
    return {"datasets": [d.public() for d in found]}
