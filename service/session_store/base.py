"""What every session store offers the engine and the routes, wherever it keeps sessions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from models.store import LoadedModel
from models.tokenizer import Encoded

from ..sessions import FeedResult, Session

T = TypeVar("T")
Resolve = Callable[[str, int], LoadedModel]  # a session's pinned name and version -> the model


class SessionBackend(Protocol):
    """`service.sessions.SessionStore` (this process's memory, the default) and
    `RedisSessionStore` (shared by every replica) both implement it.

    Errors: `SessionNotFound` (unknown, expired, evicted, deleted), `SessionForbidden` (no or
    the wrong token), `EmptyFeed`, `SessionBusy` (a feed lost every race to others on the same
    session) and `SessionStoreUnavailable` (the shared store did not answer)."""

    max_sessions: int
    ttl_s: float

    async def create_session(self, loaded: LoadedModel) -> Session:
        """A new session pinned to `loaded`; its `token` is the only copy the caller gets."""
        ...

    async def authorize_session(self, session_id: str, token: str | None) -> Session:
        """The session, only with its own token; counts as use (its idle clock restarts)."""
        ...

    async def delete_session(self, session_id: str, token: str | None) -> None: ...

    async def session_alive(self, session_id: str) -> bool:
        """Whether the session is still held, without counting as use."""
        ...

    def expires_in(self, session: Session) -> float:
        """Seconds left before `session` (as last looked up) expires unless used."""
        ...

    async def feed_with(
        self,
        session: Session,
        encoded: Encoded,
        answer: Callable[[FeedResult], T],
        top_k: int = 5,
        temperature: float = 1.0,
    ) -> T:
        """Advance `session` by `encoded`; `answer` is made before the new state is kept, and a
        feed that fails anywhere leaves the session as it was."""
        ...

    def start(self) -> None: ...

    async def close(self) -> None: ...

    def shutdown(self) -> None: ...
