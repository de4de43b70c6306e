"""Stateful sessions: feed text piece by piece, pay only for the new tokens."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response

from ..deps import EngineDep, ReaderDep, RegistryDep, SessionsDep
from ..errors import ApiError
from ..inference import served
from ..schemas.common import ErrorBody
from ..schemas.sessions import FeedRequest, FeedResponse, SessionCreate, SessionInfo
from ..sessions import Session, SessionNotFound, SessionStore
from .predict import ERRORS

router = APIRouter(tags=["sessions"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown, expired, evicted or deleted session"},
}


def _info(sessions: SessionStore, s: Session) -> dict[str, Any]:
    return {
        **served(s.loaded),
        "session_id": s.id,
        "history_length": s.history_length,
        "feeds": s.feeds,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.created_at)),
        "idle_ttl_s": sessions.ttl_s,
        "expires_in_s": round(sessions.expires_in(s), 3),
    }


def _get(sessions: SessionStore, session_id: str) -> Session:
    try:
        return sessions.get(session_id)
    except SessionNotFound as e:
        raise ApiError(404, str(e)) from None


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionInfo,
    summary="Open a session pinned to a model version (the least recently used one is "
    "evicted when the server holds its maximum)",
    responses=ERRORS,
)
async def create_session(
    body: SessionCreate, sessions: SessionsDep, registry: RegistryDep, _: ReaderDep
) -> dict[str, Any]:
    return _info(sessions, sessions.create(registry.resolve(body.model)))


@router.post(
    "/sessions/{session_id}/feed",
    response_model=FeedResponse,
    summary="Append text; get the next-word distribution after everything fed so far",
    responses={**ERRORS, **NOT_FOUND},
)
async def feed_session(
    session_id: str, body: FeedRequest, engine: EngineDep, _: ReaderDep
) -> FeedResponse:
    return await engine.feed(session_id, body)


@router.get(
    "/sessions/{session_id}",
    response_model=SessionInfo,
    summary="Inspect a session (counts as use: its idle clock restarts)",
    responses=NOT_FOUND,
)
async def get_session(session_id: str, sessions: SessionsDep, _: ReaderDep) -> dict[str, Any]:
    return _info(sessions, _get(sessions, session_id))


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    summary="End a session and free its state",
    responses=NOT_FOUND,
)
async def delete_session(session_id: str, sessions: SessionsDep, _: ReaderDep) -> Response:
    try:
        sessions.delete(session_id)
    except SessionNotFound as e:
        raise ApiError(404, str(e)) from None
    return Response(status_code=204)
