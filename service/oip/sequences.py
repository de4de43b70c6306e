"""OIP sequence requests (`sequence_id`, `sequence_start`, `sequence_end`) onto Gatehouse's
server-held sessions, so Triton's stateful clients carry the recurrent state on the server.

A sequence's id maps to one session, created at `sequence_start` and ended at
`sequence_end`; in between, each request feeds its one text, as `/sessions/{id}/feed`
would. The session keeps its TTL and the store's limits; an id whose session expired or was
evicted is unknown again, and the map drops it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError

from ..errors import ApiError
from ..inference import InferenceEngine
from ..schemas.sessions import FeedRequest, FeedResponse
from ..sessions import SessionNotFound
from .errors import invalid


class Sequences:
    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str], str] = {}  # (model, sequence id) -> session id

    def _prune(self, engine: InferenceEngine) -> None:
        """Forget ids whose sessions are gone, once the map outgrows the store."""
        if len(self._sessions) <= engine.settings.max_sessions:
            return
        store = engine.sessions
        for key, sid in list(self._sessions.items()):
            try:
                store.get(sid)
            except SessionNotFound:
                del self._sessions[key]

    async def step(
        self, engine: InferenceEngine, ref: str, params: dict[str, Any], texts: list[str]
    ) -> FeedResponse:
        sequence = str(params["sequence_id"])
        if len(texts) != 1:
            raise ApiError(400, f"a sequence request carries one text, not {len(texts)}")
        key = (ref, sequence)
        store = engine.sessions
        if params.get("sequence_start") is True:
            old = self._sessions.pop(key, None)
            if old is not None:
                with contextlib.suppress(SessionNotFound):  # expired meanwhile: nothing to end
                    store.delete(old)
            self._prune(engine)
            self._sessions[key] = store.create(engine.resolve(ref)).id
        session_id = self._sessions.get(key)
        if session_id is None:
            raise ApiError(400, f"sequence {sequence} has not started (send sequence_start)")
        try:
            feed = FeedRequest(
                text=texts[0],
                top_k=params.get("top_k", 5),
                temperature=params.get("temperature", 1.0),
            )
        except ValidationError as e:
            raise invalid(e) from None
        try:
            answer = await engine.feed(session_id, feed)
        except ApiError as e:
            if e.status == 404:  # the session expired: so has the sequence
                self._sessions.pop(key, None)
                raise ApiError(400, f"sequence {sequence} expired; start it again") from None
            raise
        if params.get("sequence_end") is True:
            self._sessions.pop(key, None)
            with contextlib.suppress(SessionNotFound):  # the TTL may have ended it already
                store.delete(session_id)
        return answer
