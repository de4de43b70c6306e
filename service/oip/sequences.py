"""OIP sequence requests (`sequence_id`, `sequence_start`, `sequence_end`) onto Gatehouse's
server-held sessions, so Triton's stateful clients carry the recurrent state on the server.

A sequence's id maps to one session, created at `sequence_start` and ended at
`sequence_end`; in between, each request feeds its one text, as `/sessions/{id}/feed`
would. The session keeps its TTL and the store's limits; an id whose session expired or was
evicted is unknown again, and the map drops it.

Ownership: Triton's ids are small integers chosen by the client, so anyone could guess one.
Sequences are therefore held per client address: the map keeps the session's token for the
sequence the server made, and only requests from the address that started a sequence reach
it (another address using the same id has its own, separate sequence). Starting one is
opening a session: it takes the API key when one is configured and counts against the
client's session rate limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ..errors import ApiError
from ..inference import InferenceEngine
from ..schemas.sessions import FeedRequest, FeedResponse
from ..sessions import SessionForbidden, SessionNotFound, SessionStoreUnavailable
from .errors import invalid

Key = tuple[str, str, str]  # client, model, sequence id


class SequenceMap:
    """The app's one map of sequences to sessions (session id and token)."""

    def __init__(self) -> None:
        self._sessions: dict[Key, tuple[str, str]] = {}

    def for_client(self, client: str, admit: Callable[[], None]) -> Sequences:
        """The sequences of one client; `admit` raises when it may not open a session."""
        return Sequences(self, client, admit)

    async def _prune(self, engine: InferenceEngine) -> None:
        """Forget ids whose sessions are gone, once the map outgrows the store."""
        if len(self._sessions) <= engine.settings.max_sessions:
            return
        store = engine.sessions
        for key, (sid, _) in list(self._sessions.items()):
            if not await store.session_alive(sid):
                self._sessions.pop(key, None)

    async def _end(self, engine: InferenceEngine, session_id: str, token: str) -> None:
        # The TTL may have ended it already: nothing left to end then.
        with contextlib.suppress(SessionNotFound, SessionForbidden, SessionStoreUnavailable):
            await engine.sessions.delete_session(session_id, token)


class Sequences:
    def __init__(self, sequences: SequenceMap, client: str, admit: Callable[[], None]) -> None:
        self._all = sequences
        self._client = client
        self._admit = admit

    async def step(
        self, engine: InferenceEngine, ref: str, params: dict[str, Any], texts: list[str]
    ) -> FeedResponse:
        sequence = str(params["sequence_id"])
        if len(texts) != 1:
            raise ApiError(400, f"a sequence request carries one text, not {len(texts)}")
        key = (self._client, ref, sequence)
        held = self._all._sessions
        if params.get("sequence_start") is True:
            self._admit()
            old = held.pop(key, None)
            if old is not None:
                await self._all._end(engine, *old)
            await self._all._prune(engine)
            loaded = engine.resolve(ref)
            try:
                session = await engine.sessions.create_session(loaded)
            except SessionStoreUnavailable as e:
                raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None
            held[key] = (session.id, session.token)
        found = held.get(key)
        if found is None:
            raise ApiError(400, f"sequence {sequence} has not started (send sequence_start)")
        session_id, token = found
        try:
            feed = FeedRequest(
                text=texts[0],
                top_k=params.get("top_k", 5),
                temperature=params.get("temperature", 1.0),
            )
        except ValidationError as e:
            raise invalid(e) from None
        try:
            answer = await engine.feed(session_id, feed, token)
        except ApiError as e:
            if e.status == 404:  # the session expired: so has the sequence
                held.pop(key, None)
                raise ApiError(400, f"sequence {sequence} expired; start it again") from None
            raise
        if params.get("sequence_end") is True:
            held.pop(key, None)
            await self._all._end(engine, session_id, token)
        return answer
