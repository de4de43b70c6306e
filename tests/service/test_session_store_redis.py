"""The Redis session store against a real redis-server: the same answers as the in-memory
store, TTL and max count kept in Redis, tokens, and concurrent feeds from two stores (two
replicas' worth of clients and batchers) to one session applied one after the other."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import torch

from models.store import LoadedModel
from service.batcher import DynamicBatcher
from service.exposure import _masked
from service.session_store import make_session_store
from service.session_store.codec import PackedState, StateFormatError, pack, unpack
from service.session_store.redis_store import RedisSessionStore
from service.sessions import (
    EmptyFeed,
    SessionForbidden,
    SessionNotFound,
    SessionStore,
    SessionStoreUnavailable,
)
from service.settings import Settings
from service.settings_load import SettingsProblem, load
from service.steps import Step, StepResult, run_steps
from tests.daemons.redis import RedisServer, redis_server
from tests.helpers import free_port
from tests.service.conftest import make_settings
from tests.service.test_sessions import PIECES, reference, save_model

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
async def batcher() -> AsyncIterator[DynamicBatcher[LoadedModel, Step, StepResult]]:
    sb: DynamicBatcher[LoadedModel, Step, StepResult] = DynamicBatcher(
        lambda loaded, steps: run_steps(loaded.model, steps),
        max_batch_size=16,
        max_batch_delay_ms=2,
        max_queue=1000,
    )
    yield sb
    await sb.close()


@pytest.fixture
async def make_store(redis_url: str, batcher) -> AsyncIterator:
    """Stores on one Redis, each under this test's own key prefix, closed at the end."""
    made: list[RedisSessionStore] = []
    models: dict[tuple[str, int], LoadedModel] = {}
    prefix = f"t{secrets.token_hex(4)}:"

    def _make(*loaded: LoadedModel, **kw) -> RedisSessionStore:
        for m in loaded:
            models[(m.name, m.version)] = m
        store = RedisSessionStore(
            redis_url, batcher.submit, lambda n, v: models[(n, v)], prefix=prefix, **kw
        )
        made.append(store)
        return store

    yield _make
    for store in made:
        await store.close()


def test_the_setting_picks_the_backend(tmp_path: Path, redis_url: str) -> None:
    async def step(_m: LoadedModel, _s: Step) -> StepResult:
        raise AssertionError("never stepped")

    memory = make_session_store(make_settings(tmp_path), step, lambda n, v: None)  # type: ignore[arg-type,return-value]
    assert isinstance(memory, SessionStore)
    shared = make_session_store(
        make_settings(tmp_path, session_store=redis_url, max_sessions=7),
        step,
        lambda n, v: None,  # type: ignore[arg-type,return-value]
    )
    assert isinstance(shared, RedisSessionStore) and shared.max_sessions == 7


def test_the_setting_takes_memory_or_a_redis_url_and_never_shows_a_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings(session_store=" redis://h:6379/0 ").session_store == "redis://h:6379/0"
    for ok in ("memory", "rediss://u:p@h/1", "unix:///run/redis.sock?db=2"):
        assert Settings(session_store=ok).session_store == ok
    monkeypatch.setenv("GATEHOUSE_SESSION_STORE", "http://:hunter2@h/0")
    with pytest.raises(SettingsProblem) as caught:
        load({"model_dir": tmp_path})
    assert "hunter2" not in str(caught.value) and "session_store" in str(caught.value)
    assert "redis://" in str(caught.value)  # says what it wants
    title = _masked(["service", "--session-store", "redis://:hunter2@h:6379/0", "--port", "1"])
    assert "hunter2" not in " ".join(title) and "redis://***@h:6379/0" in title
    assert "hunter2" not in " ".join(_masked(["service", "--session-store=redis://:hunter2@h"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_state_bytes_round_trip_exactly(dtype: torch.dtype) -> None:
    h, c = torch.randn(2, 5, dtype=torch.float32).to(dtype), torch.randn(2, 5).to(dtype)
    back = unpack(pack((h, c)), torch.device("cpu"))
    assert isinstance(back, tuple)
    assert torch.equal(back[0], h) and torch.equal(back[1], c) and back[0].dtype == dtype
    single = unpack(pack(h), torch.device("cpu"))
    assert isinstance(single, torch.Tensor) and torch.equal(single, h)
    packed = pack(h)
    with pytest.raises(StateFormatError):  # truncated bytes never become a tensor
        unpack(PackedState(packed.data[:-2], packed.shape, 1, packed.dtype), torch.device("cpu"))
    with pytest.raises(StateFormatError):
        unpack(PackedState(packed.data, packed.shape, 1, "pickle"), torch.device("cpu"))


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
async def test_feeds_equal_the_in_memory_store(tmp_path: Path, arch: str, make_store, batcher):
    loaded = save_model(tmp_path, arch, arch, seed=11)
    shared, memory = make_store(loaded), SessionStore(batcher.submit)
    a = await shared.create_session(loaded)
    b = await memory.create_session(loaded)
    fed: list[str] = []
    for piece in PIECES:
        enc = loaded.tokenizer.encode(piece)
        got = await shared.feed_with(
            await shared.authorize_session(a.id, a.token), enc, lambda r: r, top_k=6
        )
        want = await memory.feed_with(
            await memory.authorize_session(b.id, b.token), enc, lambda r: r, top_k=6
        )
        fed.append(piece)
        assert got.word_ids == want.word_ids
        assert got.probs == pytest.approx(want.probs, abs=1e-5)
        assert got.history_length == want.history_length
        assert got.word_ids == reference(loaded, " ".join(fed), top_k=6).ids
    info = await shared.authorize_session(a.id, a.token)
    assert (info.history_length, info.feeds) == (want.history_length, len(PIECES))
    assert (info.loaded.name, info.loaded.version) == (loaded.name, loaded.version)


async def test_tokens_guard_every_call(tmp_path: Path, make_store) -> None:
    loaded = save_model(tmp_path, "m", "gru", seed=12)
    store = make_store(loaded)
    s = await store.create_session(loaded)
    for wrong in (None, "", s.token[:-1] + ("x" if s.token[-1] != "x" else "y")):
        with pytest.raises(SessionForbidden):
            await store.authorize_session(s.id, wrong)
        with pytest.raises(SessionForbidden):
            await store.delete_session(s.id, wrong)
    assert await store.session_alive(s.id)
    with pytest.raises(EmptyFeed):
        await store.feed_with(
            await store.authorize_session(s.id, s.token), loaded.tokenizer.encode("  "), id
        )
    assert (await store.authorize_session(s.id, s.token)).history_length == 0
    await store.delete_session(s.id, s.token)
    assert not await store.session_alive(s.id)
    for call in (store.authorize_session, store.delete_session):
        with pytest.raises(SessionNotFound):
            await call(s.id, s.token)
    with pytest.raises(SessionNotFound):  # not an id the store makes: no lookup at all
        await store.authorize_session("../../etc", s.token)


async def test_ttl_is_redis_expiry_refreshed_on_use(tmp_path: Path, make_store, redis_url) -> None:
    loaded = save_model(tmp_path, "m", "lstm", seed=13)
    counts: list[tuple[str, int]] = []
    store = make_store(loaded, ttl_s=30, on_count=lambda m, n: counts.append((m, n)))
    s = await store.create_session(loaded)
    key = store._key(s.id)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert 29_000 < await client.pttl(key) <= 30_000
        await client.pexpire(key, 5_000)  # as if 25 s had gone by idle
        await store.feed_with(
            await store.authorize_session(s.id, s.token), loaded.tokenizer.encode("the"), id
        )
        assert 29_000 < await client.pttl(key) <= 30_000  # a feed is use
        await client.pexpire(key, 5_000)
        seen = await store.authorize_session(s.id, s.token)  # so is a lookup
        assert 29_000 < await client.pttl(key) <= 30_000
        assert 29 < store.expires_in(seen) <= 30
    finally:
        await client.aclose()

    short = make_store(loaded, ttl_s=0.2, on_count=lambda m, n: counts.append((m, n)))
    t = await short.create_session(loaded)
    assert counts[-1] == ("m", 2)
    await asyncio.sleep(0.6)
    assert not await short.session_alive(t.id)
    with pytest.raises(SessionNotFound):
        await short.authorize_session(t.id, t.token)
    await short.sweep()  # (its background sweep may have gone first)
    assert short.expired == 1  # the index forgot it, and the count dropped
    assert counts[-1] == ("m", 1)


async def test_max_sessions_evicts_the_least_recently_used(tmp_path: Path, make_store) -> None:
    loaded = save_model(tmp_path, "m", "rnn", seed=14)
    one, other = make_store(loaded, max_sessions=3), make_store(loaded, max_sessions=3)
    made = []
    for store in (one, other, one):  # the bound holds across every replica's creations
        made.append(await store.create_session(loaded))
        await asyncio.sleep(0.01)
    await one.authorize_session(made[0].id, made[0].token)  # made[1] is now the oldest in use
    await asyncio.sleep(0.01)
    newest = await other.create_session(loaded)
    assert other.evicted == 1
    assert not await one.session_alive(made[1].id)
    for s in (made[0], made[2], newest):
        assert await one.session_alive(s.id)
    index = await one._redis.zcard(one._index)
    assert index == 3


async def test_concurrent_feeds_from_two_replicas_serialise(tmp_path: Path, make_store) -> None:
    """Two stores, each with its own connections (two replicas), feed one session N times
    each, all at once: every feed is applied once, in some order, none lost or doubled."""
    loaded = save_model(tmp_path, "m", "lstm", seed=15)
    a, b = make_store(loaded), make_store(loaded)
    s = await a.create_session(loaded)
    enc = loaded.tokenizer.encode("the clouds")
    n = 12

    async def feed(store: RedisSessionStore) -> int:
        out = await store.feed_with(
            await store.authorize_session(s.id, s.token), enc, lambda r: r.history_length
        )
        return out

    lengths = await asyncio.gather(*(feed(st) for st in [a, b] * n))
    width = len(enc.ids)
    # Each feed started from the state the one before it kept: 2, 4, ..., 4N, once each.
    assert sorted(lengths) == [width * (i + 1) for i in range(2 * n)]
    final = await b.authorize_session(s.id, s.token)
    assert final.history_length == 2 * n * width and final.feeds == 2 * n
    last = await b.feed_with(final, loaded.tokenizer.encode("."), lambda r: r)
    want = reference(loaded, " ".join(["the clouds"] * (2 * n) + ["."]))
    assert last.word_ids == want.ids
    assert last.probs == pytest.approx(want.probs, abs=1e-5)


async def test_an_unreachable_redis_is_a_clear_error(tmp_path: Path, batcher) -> None:
    loaded = save_model(tmp_path, "m", "gru", seed=16)
    store = RedisSessionStore(
        f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        batcher.submit,
        lambda n, v: loaded,
        socket_timeout_s=1,
    )
    try:
        with pytest.raises(SessionStoreUnavailable) as caught:
            await store.create_session(loaded)
        assert "hunter2" not in str(caught.value) and "hunter2" not in store.where
        with pytest.raises(SessionStoreUnavailable):
            await store.authorize_session("abc", "t")
    finally:
        await store.close()


async def test_a_stopped_redis_fails_calls_without_a_hang(tmp_path: Path, batcher) -> None:
    """Redis going away mid-life: calls fail with SessionStoreUnavailable, none hang."""
    loaded = save_model(tmp_path, "m", "rnn", seed=17)
    server = RedisServer(tmp_path)
    store = RedisSessionStore(server.url, batcher.submit, lambda n, v: loaded, socket_timeout_s=1)
    try:
        s = await store.create_session(loaded)
        seen = await store.authorize_session(s.id, s.token)
        server.stop()
        with pytest.raises(SessionStoreUnavailable):
            await asyncio.wait_for(
                store.feed_with(seen, loaded.tokenizer.encode("the"), id), timeout=20
            )
    finally:
        server.stop()
        await store.close()
