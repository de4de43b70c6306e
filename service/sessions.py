"""Server-held recurrent state: a client feeds text piece by piece and pays only for the new
tokens, never for the history (the recurrent counterpart of Triton's sequence batcher).

A session holds the model version it was created with (the `LoadedModel` object itself), so a
newer version loaded meanwhile neither changes nor frees it. Limits: a session idle for
`ttl_s` expires; when `max_sessions` are open, creating one evicts the least recently used
(creation never fails for lack of room; the HTTP layer limits how fast one client creates
them). Feeds to one session are serialised by its own lock; feeds to different sessions run
concurrently and batch together in the step function.

Every session has a secret token, made with it: `authorize` is the lookup for callers acting
for a client, and refuses (SessionForbidden) one that does not present that token, compared in
constant time, so holding a session id alone neither reads, feeds nor ends it.

This is the default store, in this process's memory; `service.session_store` chooses between
it and the Redis one every replica shares (`SessionBackend`, the async methods below).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from models.store import LoadedModel
from models.tokenizer import Encoded

from .steps import RowState, Step, StepResult

log = logging.getLogger("gatehouse.sessions")

StepFn = Callable[[LoadedModel, Step], Awaitable[StepResult]]
CountHook = Callable[[str, int], None]  # model name, open sessions of that model
T = TypeVar("T")


class SessionNotFound(LookupError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r} (unknown, expired, evicted or deleted)")
        self.session_id = session_id


class SessionForbidden(PermissionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id!r} needs its own session_token (the X-Session-Token header)"
        )
        self.session_id = session_id


class EmptyFeed(ValueError):
    """The fed text holds no tokens: there is nothing to advance the state with."""


class SessionStoreUnavailable(RuntimeError):
    """A shared session store (Redis) did not answer: the caller may try again shortly."""


class SessionBusy(RuntimeError):
    """Other feeds to the same session kept winning the race; the caller may try again."""


@dataclass(eq=False)
class Session:
    id: str
    loaded: LoadedModel
    created_at: float  # wall clock, for display
    last_used: float  # monotonic, for expiry
    history_length: int = 0
    feeds: int = 0
    state: RowState | None = None  # None until the first feed: the zero state
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)


@dataclass
class FeedResult:
    session: Session
    tokens: list[str]
    unknown: list[str]
    word_ids: list[int]
    probs: list[float]
    history_length: int  # this feed included

    @property
    def words(self) -> list[str]:
        return self.session.loaded.tokenizer.decode(self.word_ids)


class SessionStore:
    def __init__(
        self,
        step: StepFn,
        *,
        max_sessions: int = 10_000,
        ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
        on_count: CountHook | None = None,
        sweep_interval_s: float | None = None,
    ) -> None:
        if max_sessions < 1 or ttl_s <= 0:
            raise ValueError("max_sessions must be >= 1 and ttl_s > 0")
        self._step = step
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._clock = clock
        self._sweep_every = sweep_interval_s or min(30.0, max(0.05, ttl_s / 4))
        self._on_count = on_count
        # Least recently used first: expiry and eviction both take from the front.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._per_model: Counter[str] = Counter()
        self._reaper: asyncio.Task[None] | None = None
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, loaded: LoadedModel) -> Session:
        self.start()
        self.sweep()
        while len(self._sessions) >= self.max_sessions:
            _, oldest = self._sessions.popitem(last=False)
            self._close(oldest)
            self.evicted += 1
        now = self._clock()
        session = Session(secrets.token_urlsafe(18), loaded, time.time(), now)
        self._sessions[session.id] = session
        self._count(loaded.name, +1)
        return session

    def get(self, session_id: str) -> Session:
        """The live session (its idle clock restarts), or SessionNotFound."""
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        now = self._clock()
        if now - session.last_used >= self.ttl_s:
            del self._sessions[session_id]
            self._close(session)
            self.expired += 1
            raise SessionNotFound(session_id)
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def authorize(self, session_id: str, token: str | None) -> Session:
        """`get` for a caller acting for a client: the session only with its own token."""
        session = self.get(session_id)
        # compare_digest takes the same time wherever the strings differ.
        if token is None or not hmac.compare_digest(token.encode(), session.token.encode()):
            raise SessionForbidden(session_id)
        return session

    def alive(self, session_id: str) -> bool:
        """Whether the session is still held, without counting as use."""
        session = self._sessions.get(session_id)
        return session is not None and self._clock() - session.last_used < self.ttl_s

    def expires_in(self, session: Session) -> float:
        return max(0.0, session.last_used + self.ttl_s - self._clock())

    def delete(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise SessionNotFound(session_id)
        self._close(session)

    async def feed(
        self, session: Session, encoded: Encoded, top_k: int = 5, temperature: float = 1.0
    ) -> FeedResult:
        """Advance `session` (from `get`) by `encoded` (text already encoded with the
        session's own tokenizer, limits checked); the predictions are for the word after
        everything fed so far. A feed that fails (or is cancelled) leaves the session as it
        was."""
        return await self.feed_with(session, encoded, lambda out: out, top_k, temperature)

    async def feed_with(
        self,
        session: Session,
        encoded: Encoded,
        answer: Callable[[FeedResult], T],
        top_k: int = 5,
        temperature: float = 1.0,
    ) -> T:
        """`feed`, with the caller's answer made from the result before the session keeps
        anything: if `answer` raises, the feed did not happen, so a retry is no double feed."""
        if not encoded.ids:
            raise EmptyFeed("text has no tokens to feed")
        async with session.lock:
            if session.closed:
                raise SessionNotFound(session.id)
            result = await self._step(
                session.loaded,
                Step(
                    ids=encoded.ids,
                    state=session.state,
                    top_k=top_k,
                    temperature=temperature,
                    want_state=True,
                ),
            )
            out = FeedResult(
                session,
                encoded.tokens,
                encoded.unknown,
                result.ids,
                result.probs,
                session.history_length + len(encoded.ids),
            )
            made = answer(out)
            session.history_length = out.history_length
            session.feeds += 1
            if not session.closed:  # deleted or evicted meanwhile: answer, but keep nothing
                session.state = result.state
                session.last_used = self._clock()
                self._sessions.move_to_end(session.id)
        return made

    # The `SessionBackend` surface (service.session_store), which a shared store implements
    # with network round trips: here each is the synchronous call, with nothing to wait for.
    async def create_session(self, loaded: LoadedModel) -> Session:
        return self.create(loaded)

    async def authorize_session(self, session_id: str, token: str | None) -> Session:
        return self.authorize(session_id, token)

    async def delete_session(self, session_id: str, token: str | None) -> None:
        self.authorize(session_id, token)
        self.delete(session_id)

    async def session_alive(self, session_id: str) -> bool:
        return self.alive(session_id)

    def sweep(self) -> int:
        """Drop every expired session; returns how many."""
        now = self._clock()
        dropped = 0
        while self._sessions:
            session = next(iter(self._sessions.values()))
            if now - session.last_used < self.ttl_s:
                break  # LRU order: everything after this one was used more recently
            del self._sessions[session.id]
            self._close(session)
            dropped += 1
        self.expired += dropped
        return dropped

    def start(self) -> None:
        """Sweep in the background so expired sessions free their memory without traffic.

        `create` calls this too, so the reaper runs whenever a session exists."""
        if self._reaper is None or self._reaper.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no event loop (synchronous use): expiry stays lazy
            self._reaper = loop.create_task(
                self._reap(self._sweep_every), name="gatehouse-session-reaper"
            )

    async def close(self) -> None:
        reaper = self._reaper
        self.shutdown()
        if reaper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    def shutdown(self) -> None:
        """`close` for synchronous callers: the reaper is cancelled, not awaited."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for session in self._sessions.values():
            self._close(session)
        self._sessions.clear()

    async def _reap(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                self.sweep()
            except Exception:  # never let the reaper die silently
                log.exception("session sweep failed")

    def _close(self, session: Session) -> None:
        if session.closed:
            return
        session.closed = True
        session.state = None  # free the tensors now, even if a request still holds the object
        self._count(session.loaded.name, -1)

    def _count(self, model: str, delta: int) -> None:
        self._per_model[model] += delta
        if self._on_count is not None:
            try:
                self._on_count(model, self._per_model[model])
            except Exception:
                log.exception("session count hook failed")
