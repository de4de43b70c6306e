"""Stateful sessions: feed text piece by piece, pay only for the new tokens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Request, Response

from ..auth import admit_new_session
from ..deps import (
    EngineDep,
    ReaderDep,
    RegistryDep,
    SessionsDep,
    SessionTokenDep,
)
from ..errors import ApiError
from ..inference import served
from ..schemas.common import ErrorBody
from ..schemas.sessions import (
    FeedRequest,
    FeedResponse,
    SessionCreate,
    SessionCreated,
    SessionInfo,
)
from ..session_store import SessionBackend
from ..sessions import (
    Session,
    SessionForbidden,
    SessionNotFound,
    SessionStoreUnavailable,
)
from .predict import ERRORS

router = APIRouter(tags=["sessions"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "No or the wrong X-Session-Token"},
    404: {"model": ErrorBody, "description": "Unknown, expired, evicted or deleted session"},
}
CREATE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "An API key is configured and not sent"},
    429: {"model": ErrorBody, "description": "This client opened too many sessions lately"},
}


def _info(sessions: SessionBackend, s: Session) -> dict[str, Any]:
    return {
        **served(s.loaded),
        "session_id": s.id,
        "history_length": s.history_length,
        "feeds": s.feeds,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.created_at)),
        "idle_ttl_s": sessions.ttl_s,
        "expires_in_s": round(sessions.expires_in(s), 3),
    }


@contextmanager
def _answered() -> Iterator[None]:
    """The store's refusals as the contract's status codes."""
    try:
        yield
    except SessionNotFound as e:
        raise ApiError(404, str(e)) from None
    except SessionForbidden as e:
        raise ApiError(403, str(e)) from None
    except SessionStoreUnavailable as e:
        raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None


@router.post(
    "/sessions",
    status_code=201,
    response_model=SessionCreated,
    summary="Open a session pinned to a model version (the least recently used one is "
    "evicted when the server holds its maximum); every later call on it sends the "
    "session_token answered here as X-Session-Token",
    responses={**ERRORS, **CREATE_ERRORS},
)
async def create_session(
    body: SessionCreate,
    request: Request,
    sessions: SessionsDep,
    registry: RegistryDep,
    _: ReaderDep,
) -> dict[str, Any]:
    admit_new_session(request)
    loaded = registry.resolve(body.model)
    with _answered():
        session = await sessions.create_session(loaded)
    return {**_info(sessions, session), "session_token": session.token}


@router.post(
    "/sessions/{session_id}/feed",
    response_model=FeedResponse,
    summary="Append text; get the next-word distribution after everything fed so far",
    responses={**ERRORS, **NOT_FOUND},
)
async def feed_session(
    session_id: str, body: FeedRequest, engine: EngineDep, token: SessionTokenDep, _: ReaderDep
) -> FeedResponse:
    return await engine.feed(session_id, body, token)


@router.get(
    "/sessions/{session_id}",
    response_model=SessionInfo,
    summary="Inspect a session (counts as use: its idle clock restarts)",
    responses=NOT_FOUND,
)
async def get_session(
    session_id: str, sessions: SessionsDep, token: SessionTokenDep, _: ReaderDep
) -> dict[str, Any]:
    with _answered():
        session = await sessions.authorize_session(session_id, token)
    return _info(sessions, session)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    summary="End a session and free its state",
    responses=NOT_FOUND,
)
async def delete_session(
    session_id: str, sessions: SessionsDep, token: SessionTokenDep, _: ReaderDep
) -> Response:
    with _answered():
        await sessions.delete_session(session_id, token)
    return Response(status_code=204)
