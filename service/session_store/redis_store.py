"""Sessions in Redis: every replica reads and writes the same sessions, so any of them takes
the next feed, and a replica that dies loses nothing that was answered.

A session is one Redis hash (see `lua.py`): the pinned model name and version, the history
length, the hash of its token and, once fed, its recurrent state as raw bytes. A feed reads
the hash (one round trip, which also moves its idle deadline), runs the step through the
engine's batcher like any other feed, and keeps the new state with a compare-and-set on the
session's `rev` counter (a second round trip). A feed that lost to another one, on this
replica or another, reads the session again and redoes its step from the state the winner
kept, so concurrent feeds to one session are applied one after the other, none lost. Within
one replica, feeds to one session also wait their turn on a local lock, so they do not race
each other through Redis; feeds to different sessions still share forward passes.

The round trips run on the event loop (redis.asyncio), never on the inference thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from models.store import LoadedModel
from models.tokenizer import Encoded

from ..redact import without_credentials
from ..sessions import (
    CountHook,
    EmptyFeed,
    FeedResult,
    Session,
    SessionBusy,
    SessionForbidden,
    SessionNotFound,
    SessionStoreUnavailable,
    StepFn,
)
from ..steps import Step
from .base import Resolve
from .codec import PackedState, StateFormatError, pack, unpack
from .lua import COMMIT, CREATE, DELETE, FETCH, SWEEP

log = logging.getLogger("gatehouse.sessions")

T = TypeVar("T")

# What `secrets.token_urlsafe` makes: anything else cannot be a session id, no lookup needed.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# How long a feed keeps trying when other feeds to its session keep winning.
_RACE_DEADLINE_S = 10.0


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).hexdigest().encode()


@dataclass(eq=False)
class RedisSession(Session):
    """A session as last read from Redis: `rev` is the counter the next feed must still see."""

    rev: int = 0
    packed: PackedState | None = None
    expires_at: float = 0.0  # monotonic


class RedisSessionStore:
    def __init__(
        self,
        url: str,
        step: StepFn,
        resolve: Resolve,
        *,
        max_sessions: int = 10_000,
        ttl_s: float = 900.0,
        on_count: CountHook | None = None,
        sweep_interval_s: float | None = None,
        prefix: str = "gatehouse:",
        socket_timeout_s: float = 5.0,
    ) -> None:
        if max_sessions < 1 or ttl_s <= 0:
            raise ValueError("max_sessions must be >= 1 and ttl_s > 0")
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.where = without_credentials(url)
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._step = step
        self._resolve = resolve
        self._on_count = on_count
        # Often: the sweep is one cheap script, and it is how this replica's per-model gauge
        # learns of sessions other replicas opened or ended.
        self._sweep_every = sweep_interval_s or min(5.0, max(0.05, ttl_s / 4))
        # Timeouts bound every call: a Redis that stops answering gives a 503, never a hang.
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        self._session_prefix = f"{prefix}session:"
        self._index = f"{prefix}sessions"
        self._model_prefix = f"{prefix}sessions:model:"
        self._models = f"{prefix}session-models"
        self._create = self._redis.register_script(CREATE)
        self._fetch_script = self._redis.register_script(FETCH)
        self._commit = self._redis.register_script(COMMIT)
        self._delete = self._redis.register_script(DELETE)
        self._sweep = self._redis.register_script(SWEEP)
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.evicted = 0
        self.expired = 0
        self.lost_races = 0  # feeds redone because another feed to the session won

    # ---- the SessionBackend surface ----------------------------------------------------
    async def create_session(self, loaded: LoadedModel) -> Session:
        self.start()
        sid, token = secrets.token_urlsafe(18), secrets.token_urlsafe(32)
        created = time.time()
        keys = [self._key(sid), self._index, self._model_prefix + loaded.name, self._models]
        args = [sid, self._ttl_ms, self.max_sessions, loaded.name, loaded.version]
        args += [_digest(token), repr(created), self._session_prefix, self._model_prefix]
        evicted, expired, count, _ = await self._call(self._create(keys=keys, args=args))
        self.evicted += int(evicted)
        self.expired += int(expired)
        self._count(loaded.name, int(count))
        return RedisSession(
            sid,
            loaded,
            created,
            time.monotonic(),
            token=token,
            expires_at=time.monotonic() + self.ttl_s,
        )

    async def authorize_session(self, session_id: str, token: str | None) -> Session:
        return self._snapshot(session_id, await self._owned(session_id, token))

    async def delete_session(self, session_id: str, token: str | None) -> None:
        # No model lookup: a session pinned to a version gone from the store still ends.
        await self._owned(session_id, token)
        keys = [self._key(session_id), self._index]
        deleted, model, count = await self._call(
            self._delete(keys=keys, args=[session_id, self._model_prefix])
        )
        if model:
            self._count(model.decode(), int(count))
        if not deleted:
            raise SessionNotFound(session_id)

    async def session_alive(self, session_id: str) -> bool:
        if not _ID.match(session_id):
            return False
        return bool(await self._call(self._redis.exists(self._key(session_id))))

    def expires_in(self, session: Session) -> float:
        at = session.expires_at if isinstance(session, RedisSession) else 0.0
        return max(0.0, at - time.monotonic())

    async def feed_with(
        self,
        session: Session,
        encoded: Encoded,
        answer: Callable[[FeedResult], T],
        top_k: int = 5,
        temperature: float = 1.0,
    ) -> T:
        if not encoded.ids:
            raise EmptyFeed("text has no tokens to feed")
        if not isinstance(session, RedisSession):
            raise TypeError("a RedisSessionStore feeds the sessions it looked up itself")
        deadline = time.monotonic() + _RACE_DEADLINE_S
        async with self._turn(session.id) as waited:
            # Another feed of this replica went first: what we read is stale for certain.
            current = await self._reread(session) if waited else session
            attempt = 0
            while True:
                made, kept = await self._attempt(current, encoded, answer, top_k, temperature)
                if kept:
                    return made
                self.lost_races += 1
                attempt += 1
                if time.monotonic() >= deadline:
                    raise SessionBusy(
                        f"session {session.id!r} is being fed by others without pause; try again"
                    )
                # Randomised, growing pauses: two replicas do not collide again in step.
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                current = await self._reread(session)

    def start(self) -> None:
        """Sweep the index in the background (and publish the per-model counts)."""
        if self._reaper is None or self._reaper.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._reaper = loop.create_task(self._reap(), name="gatehouse-session-reaper")

    async def close(self) -> None:
        reaper = self._reaper
        self.shutdown()
        if reaper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    async def sweep(self) -> int:
        """Forget index entries of expired sessions; returns how many."""
        out = await self._call(
            self._sweep(keys=[self._index, self._models], args=[self._model_prefix])
        )
        for name, count in zip(out[1::2], out[2::2], strict=True):
            self._count(name.decode(), int(count))
        self.expired += int(out[0])
        return int(out[0])

    # ---- one feed --------------------------------------------------------------------
    async def _attempt(
        self,
        current: RedisSession,
        encoded: Encoded,
        answer: Callable[[FeedResult], T],
        top_k: int,
        temperature: float,
    ) -> tuple[T | None, bool]:
        """One step from `current`'s state; (answer, True) when its state was kept or the
        session went meanwhile (answered, nothing kept, as in memory), else (None, False)."""
        loaded = current.loaded
        device = loaded.model.decoder.weight.device
        try:
            state = None if current.packed is None else unpack(current.packed, device)
        except StateFormatError as e:
            log.error("session %s: %s", current.id, e)
            raise SessionNotFound(current.id) from None
        step = Step(encoded.ids, state, top_k, temperature, want_state=True)
        result = await self._step(loaded, step)
        history = current.history_length + len(encoded.ids)
        out = FeedResult(
            current, encoded.tokens, encoded.unknown, result.ids, result.probs, history
        )
        made = answer(out)
        assert result.state is not None  # want_state
        packed = pack(result.state)
        f = packed.fields()
        keys = [self._key(current.id), self._index]
        args = [current.rev, self._ttl_ms, current.id, self._model_prefix, len(encoded.ids)]
        args += [f["state"], f["shape"], f["parts"], f["dtype"]]
        verdict = int(await self._call(self._commit(keys=keys, args=args)))
        if verdict == 0:
            return None, False
        if verdict == 1:
            current.rev += 1
            current.history_length = history
            current.feeds += 1
            current.packed = packed
            current.expires_at = time.monotonic() + self.ttl_s
        return made, True

    async def _reread(self, session: RedisSession) -> RedisSession:
        return self._snapshot(session.id, await self._fetch(session.id))

    # ---- helpers -----------------------------------------------------------------------
    def _key(self, session_id: str) -> str:
        return self._session_prefix + session_id

    async def _owned(self, session_id: str, token: str | None) -> dict[bytes, bytes]:
        """The session's fields, only for its own token (the lookup counts as use)."""
        fields = await self._fetch(session_id)
        # compare_digest takes the same time wherever the digests differ.
        if token is None or not hmac.compare_digest(_digest(token), fields.get(b"token", b"")):
            raise SessionForbidden(session_id)
        return fields

    async def _fetch(self, session_id: str) -> dict[bytes, bytes]:
        if not _ID.match(session_id):
            raise SessionNotFound(session_id)
        flat = await self._call(
            self._fetch_script(
                keys=[self._key(session_id), self._index],
                args=[self._ttl_ms, session_id, self._model_prefix],
            )
        )
        if not flat:
            raise SessionNotFound(session_id)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def _snapshot(self, session_id: str, fields: dict[bytes, bytes]) -> RedisSession:
        try:
            name, version = fields[b"model"].decode(), int(fields[b"version"])
            history, feeds, rev = (int(fields[k]) for k in (b"history", b"feeds", b"rev"))
            created = float(fields[b"created"])
            packed = PackedState.from_fields(fields)
        except (KeyError, ValueError) as e:
            log.error("session %s is malformed in Redis: %s", session_id, e)
            raise SessionNotFound(session_id) from None
        now = time.monotonic()
        return RedisSession(
            session_id,
            self._resolve(name, version),
            created,
            now,
            history_length=history,
            feeds=feeds,
            token="",
            rev=rev,
            packed=packed,
            expires_at=now + self.ttl_s,
        )

    @contextlib.asynccontextmanager
    async def _turn(self, session_id: str) -> AsyncIterator[bool]:
        """This replica's feeds to one session one at a time; yields whether it waited."""
        entry = self._turns.get(session_id)
        if entry is None:
            entry = self._turns[session_id] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        waited = lock.locked()
        try:
            async with lock:
                yield waited
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._turns[session_id]

    async def _call(self, pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except (RedisError, OSError) as e:
            log.warning("session store %s: %s", self.where, without_credentials(str(e)))
            raise SessionStoreUnavailable(
                "the session store did not answer; try again shortly"
            ) from None

    async def _reap(self) -> None:
        try:
            await self._call(self._redis.ping())
            log.info("sessions are kept in Redis at %s", self.where)
        except SessionStoreUnavailable:
            log.warning("sessions are kept in Redis at %s, which does not answer yet", self.where)
        while True:
            try:
                await self.sweep()
            except SessionStoreUnavailable:
                pass  # logged; the next round tries again
            except Exception:  # never let the reaper die silently
                log.exception("session sweep failed")
            await asyncio.sleep(self._sweep_every)

    def _count(self, model: str, count: int) -> None:
        if self._on_count is not None:
            try:
                self._on_count(model, count)
            except Exception:
                log.exception("session count hook failed")
