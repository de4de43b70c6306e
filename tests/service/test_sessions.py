"""Stateful sessions at the data plane: real stored models, the real batcher, no HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from models import store
from models.lm import RNNLM, ModelConfig
from models.store import LoadedModel
from service.batcher import DynamicBatcher
from service.sessions import EmptyFeed, SessionNotFound, SessionStore
from service.steps import Step, StepResult, run_steps
from tests.helpers import tiny_tokenizer
from tests.service.conftest import make_settings

pytestmark = pytest.mark.numerics

PIECES = ["i grew up", "in france .", "the clouds are in the", "sky . i speak", "fluent"]


def save_model(model_dir: Path, name: str, arch: str, seed: int) -> LoadedModel:
    """A stored version with spread-out logits, so top-k order is never decided by a tie."""
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(arch, len(tok.vocab), 12, 16, 2)).eval()
    with torch.no_grad():
        model.decoder.weight.mul_(30)
        model.embedding.weight.mul_(10)
    version = store.save_version(model_dir, name, model, tok, {"seed": seed})
    return store.load_version(model_dir, name, version)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reference(loaded: LoadedModel, text: str, top_k: int = 5) -> StepResult:
    """What /predict computes: the whole text from the zero state, alone in its batch."""
    return run_steps(loaded.model, [Step(loaded.tokenizer.encode(text).ids, top_k=top_k)])[0]


@pytest.fixture
async def stepper() -> AsyncIterator[tuple[DynamicBatcher, list[list[Step]]]]:
    batches: list[list[Step]] = []
    sb: DynamicBatcher[LoadedModel, Step, StepResult] = DynamicBatcher(
        lambda loaded, steps: run_steps(loaded.model, steps),
        max_batch_size=16,
        max_batch_delay_ms=5,
        max_queue=100,
        on_batch=lambda _k, steps, _w, _s: batches.append(steps),
    )
    yield sb, batches
    await sb.close()


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
async def test_feed_equals_predict_on_the_concatenation(tmp_path: Path, arch: str, stepper) -> None:
    sb, batches = stepper
    loaded = save_model(tmp_path, arch, arch, seed=1)
    sessions = SessionStore(sb.submit)
    sid = sessions.create(loaded).id
    fed: list[str] = []
    for piece in PIECES:
        out = await sessions.feed(sessions.get(sid), loaded.tokenizer.encode(piece), top_k=6)
        fed.append(piece)
        want = reference(loaded, " ".join(fed), top_k=6)
        assert out.word_ids == want.ids
        assert out.probs == pytest.approx(want.probs, abs=1e-4)
        assert out.session.history_length == len(loaded.tokenizer.encode(" ".join(fed)).ids)
        assert out.words == loaded.tokenizer.decode(want.ids)
    # Each step consumed only the new tokens: the cost of a step does not grow with history.
    assert [len(b[0].ids) for b in batches] == [len(loaded.tokenizer.encode(p).ids) for p in PIECES]
    assert all(b[0].state is not None for b in batches[1:])


async def test_temperature_applies_to_feeds(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    loaded = save_model(tmp_path, "m", "lstm", seed=2)
    sessions = SessionStore(sb.submit)
    sid = sessions.create(loaded).id
    out = await sessions.feed(
        sessions.get(sid), loaded.tokenizer.encode("the clouds"), top_k=3, temperature=2
    )
    ids = loaded.tokenizer.encode("the clouds").ids
    want = run_steps(loaded.model, [Step(ids, top_k=3, temperature=2)])[0]
    assert out.probs == pytest.approx(want.probs, abs=1e-5)


async def test_idle_sessions_expire(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    loaded = save_model(tmp_path, "m", "gru", seed=3)
    clock = Clock()
    counts: list[tuple[str, int]] = []
    sessions = SessionStore(
        sb.submit, ttl_s=10, clock=clock, on_count=lambda m, n: counts.append((m, n))
    )
    a = sessions.create(loaded).id
    b = sessions.create(loaded).id
    clock.now += 9.5
    await sessions.feed(
        sessions.get(a), loaded.tokenizer.encode("the")
    )  # use restarts a's idle clock
    clock.now += 9.5
    assert sessions.get(a).history_length == 1  # 9.5 s idle: still alive
    with pytest.raises(SessionNotFound):
        sessions.get(b)  # 19 s idle
    clock.now += 10
    assert sessions.sweep() == 1  # a expires without being touched
    assert len(sessions) == 0 and sessions.expired == 2
    with pytest.raises(SessionNotFound):
        await sessions.feed(sessions.get(a), loaded.tokenizer.encode("the"))
    assert counts[-1] == ("m", 0) and max(n for _, n in counts) == 2


async def test_background_sweep_frees_expired_sessions(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    loaded = save_model(tmp_path, "m", "rnn", seed=4)
    clock = Clock()
    sessions = SessionStore(sb.submit, ttl_s=5, clock=clock, sweep_interval_s=0.01)
    session = sessions.create(loaded)  # starts the background sweep
    await sessions.feed(sessions.get(session.id), loaded.tokenizer.encode("the sky"))
    try:
        clock.now += 6
        for _ in range(200):
            if not len(sessions):
                break
            await asyncio.sleep(0.01)
        assert len(sessions) == 0
        assert session.closed and session.state is None  # its tensors are released
    finally:
        await sessions.close()


async def test_full_store_evicts_the_least_recently_used(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    loaded = save_model(tmp_path, "m", "lstm", seed=5)
    clock = Clock()
    sessions = SessionStore(sb.submit, max_sessions=3, clock=clock)
    ids = []
    for _ in range(3):
        ids.append(sessions.create(loaded).id)
        clock.now += 1
    await sessions.feed(
        sessions.get(ids[0]), loaded.tokenizer.encode("the")
    )  # oldest, but used just now
    sessions.get(ids[1])
    newest = sessions.create(loaded).id  # full: ids[2] is now the least recently used
    assert len(sessions) == 3 and sessions.evicted == 1
    with pytest.raises(SessionNotFound):
        sessions.get(ids[2])
    for sid in (ids[0], ids[1], newest):
        sessions.get(sid)


async def test_a_session_keeps_its_version_after_a_new_one(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    v1 = save_model(tmp_path, "m", "lstm", seed=6)
    sessions = SessionStore(sb.submit)
    old = sessions.create(v1)
    await sessions.feed(sessions.get(old.id), v1.tokenizer.encode(PIECES[0]))
    v2 = save_model(tmp_path, "m", "lstm", seed=7)  # a new version lands and is loaded
    assert (v2.name, v2.version) == ("m", 2)
    new = sessions.create(v2)
    text = PIECES[0] + " " + PIECES[1]
    # Both feeds in flight together: batched by model version, never mixed up.
    got_old, got_new = await asyncio.gather(
        sessions.feed(sessions.get(old.id), v1.tokenizer.encode(PIECES[1])),
        sessions.feed(sessions.get(new.id), v2.tokenizer.encode(text)),
    )
    assert got_old.session.loaded.version == 1 and got_new.session.loaded.version == 2
    want_v1, want_v2 = reference(v1, text), reference(v2, text)
    assert got_old.word_ids == want_v1.ids
    assert got_old.probs == pytest.approx(want_v1.probs, abs=1e-4)
    assert got_new.word_ids == want_v2.ids
    assert got_new.probs == pytest.approx(want_v2.probs, abs=1e-4)
    assert want_v1.probs != pytest.approx(want_v2.probs, abs=1e-3)  # the versions do differ


async def test_concurrent_feeds_to_one_session_serialise(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    loaded = save_model(tmp_path, "m", "gru", seed=8)
    sessions = SessionStore(sb.submit)
    sid = sessions.create(loaded).id
    enc = [loaded.tokenizer.encode(p) for p in PIECES]
    await asyncio.gather(*(sessions.feed(sessions.get(sid), e) for e in enc))
    # Lock order is arrival order: the state is exactly that of the pieces in sequence.
    session = sessions.get(sid)
    assert session.history_length == sum(len(e.ids) for e in enc)
    last = await sessions.feed(sessions.get(sid), loaded.tokenizer.encode("."))
    want = reference(loaded, " ".join([*PIECES, "."]))
    assert last.word_ids == want.ids
    assert last.probs == pytest.approx(want.probs, abs=1e-4)


async def test_steps_of_different_sessions_share_a_batch(tmp_path: Path, stepper) -> None:
    sb, batches = stepper
    loaded = save_model(tmp_path, "m", "lstm", seed=9)
    sessions = SessionStore(sb.submit)
    sids = [sessions.create(loaded).id for _ in range(8)]
    for rounds in range(3):
        outs = await asyncio.gather(
            *(
                sessions.feed(
                    sessions.get(sid), loaded.tokenizer.encode(PIECES[(i + rounds) % len(PIECES)])
                )
                for i, sid in enumerate(sids)
            )
        )
        for i, out in enumerate(outs):
            text = " ".join(PIECES[(i + r) % len(PIECES)] for r in range(rounds + 1))
            assert out.word_ids == reference(loaded, text).ids
    carried = [b for b in batches if len(b) > 1 and all(s.state is not None for s in b)]
    assert carried, "session steps never shared a forward pass"


async def test_delete_and_empty_feed(tmp_path: Path, stepper) -> None:
    sb, _ = stepper
    loaded = save_model(tmp_path, "m", "rnn", seed=10)
    sessions = SessionStore(sb.submit)
    sid = sessions.create(loaded).id
    with pytest.raises(EmptyFeed):
        await sessions.feed(sessions.get(sid), loaded.tokenizer.encode("   "))
    assert sessions.get(sid).history_length == 0
    sessions.delete(sid)
    with pytest.raises(SessionNotFound):
        sessions.get(sid)
    with pytest.raises(SessionNotFound):
        sessions.delete(sid)
    with pytest.raises(SessionNotFound):
        sessions.get("not-a-session")
    assert len({sessions.create(loaded).id for _ in range(50)}) == 50


# ---- over HTTP (the in-process app) ------------------------------------------------------


def as_dist(predictions: list[dict]) -> dict[str, float]:
    return {p["word"]: p["prob"] for p in predictions}


def assert_close_dists(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    da, db = as_dist(a), as_dist(b)
    assert da.keys() == db.keys()
    for word, prob in da.items():
        assert prob == pytest.approx(db[word], abs=tol), word


async def open_session(client, body: dict) -> tuple[str, dict[str, str]]:
    """A new session's id and the headers that open it (its token)."""
    r = await client.post("/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["session_id"], {"x-session-token": r.json()["session_token"]}


async def test_http_feed_equals_predict_on_the_concatenation(client) -> None:
    r = await client.post("/sessions", json={"model": "gru"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["model"] == "gru" and created["version"] == 1
    sid = created["session_id"]
    client.headers["x-session-token"] = created["session_token"]
    fed: list[str] = []
    for piece in PIECES:
        r = await client.post(f"/sessions/{sid}/feed", json={"text": piece, "top_k": 100})
        assert r.status_code == 200, r.text
        body = r.json()
        fed.append(piece)
        want = await client.post(
            "/predict", json={"model": "gru", "text": " ".join(fed), "top_k": 100}
        )
        # All words: the untrained test model's near-ties must not decide what is compared.
        assert_close_dists(body["predictions"], want.json()["predictions"])
        assert body["history_length"] == len(want.json()["tokens"])
        assert body["tokens"] == piece.split()
    info = (await client.get(f"/sessions/{sid}")).json()
    assert info["history_length"] == body["history_length"] and info["feeds"] == len(PIECES)
    assert 0 < info["expires_in_s"] <= info["idle_ttl_s"]


async def test_http_session_errors(client) -> None:
    r = await client.post("/sessions", json={"model": "nope"})
    assert r.status_code == 404 and r.json()["message"]
    sid, own = await open_session(client, {})  # the default model
    client.headers.update(own)
    for body, status in [
        ({"text": "   "}, 422),
        ({"text": "the", "top_k": 0}, 422),
        ({"text": "the", "top_k": 10_000}, 422),
        ({"text": "the", "extra": 1}, 422),
        ({"text": "the", "temperature": 0}, 422),
    ]:
        r = await client.post(f"/sessions/{sid}/feed", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["message"]
    assert (await client.get(f"/sessions/{sid}")).json()["history_length"] == 0
    assert (await client.delete(f"/sessions/{sid}")).status_code == 204
    for r in [
        await client.get(f"/sessions/{sid}"),
        await client.delete(f"/sessions/{sid}"),
        await client.post(f"/sessions/{sid}/feed", json={"text": "the"}),
        await client.get("/sessions/" + "x" * 500),
    ]:
        assert r.status_code == 404 and "session" in r.json()["message"]


async def test_http_max_sessions_evicts_the_least_recently_used(make_client, tiny_store) -> None:
    client = await make_client(make_settings(tiny_store, max_sessions=2))
    (a, own_a), (b, own_b) = [await open_session(client, {"model": "rnn"}) for _ in "ab"]
    r = await client.post(f"/sessions/{a}/feed", json={"text": "the"}, headers=own_a)
    assert r.status_code == 200
    c, own_c = await open_session(client, {"model": "rnn"})
    assert (await client.get(f"/sessions/{b}", headers=own_b)).status_code == 404
    assert (await client.get(f"/sessions/{a}", headers=own_a)).status_code == 200
    assert (await client.get(f"/sessions/{c}", headers=own_c)).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'gatehouse_sessions_active{model="rnn"} 2.0' in metrics


async def test_http_session_survives_a_new_version(make_client, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    save_model(model_dir, "lstm", "lstm", seed=1)
    client = await make_client(make_settings(model_dir, reload_interval_s=0.05))
    sid, own = await open_session(client, {"model": "lstm"})
    client.headers.update(own)
    await client.post(f"/sessions/{sid}/feed", json={"text": PIECES[0]})
    save_model(model_dir, "lstm", "lstm", seed=2)  # version 2 lands in the store
    for _ in range(200):
        if (await client.get("/models/lstm")).json().get("version") == 2:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("version 2 was never picked up")
    r = await client.post(f"/sessions/{sid}/feed", json={"text": PIECES[1], "top_k": 100})
    assert r.status_code == 200 and r.json()["version"] == 1
    text = f"{PIECES[0]} {PIECES[1]}"
    v1 = await client.post("/predict", json={"model": "lstm@1", "text": text, "top_k": 100})
    v2 = await client.post("/predict", json={"model": "lstm", "text": text, "top_k": 100})
    assert v2.json()["version"] == 2
    assert_close_dists(r.json()["predictions"], v1.json()["predictions"])
    dist1, dist2 = as_dist(v1.json()["predictions"]), as_dist(v2.json()["predictions"])
    assert any(abs(dist1[w] - dist2[w]) > 1e-2 for w in dist1)  # the versions really differ
