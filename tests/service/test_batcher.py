"""Dynamic batching at the data plane: a real (tiny, untrained) RNNLM, no HTTP."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi import FastAPI

from models.lm import RNNLM, ModelConfig
from models.store import LoadedModel, load_version
from service.app import create_app
from service.batcher import DynamicBatcher, QueueFull
from service.steps import Step, StepResult, run_steps, warm_up
from tests.helpers import save_tiny_model
from tests.service.conftest import make_settings

pytestmark = pytest.mark.numerics

VOCAB = 40


def make_model(arch: str, seed: int = 0, layers: int = 2) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(arch, VOCAB, 12, 16, layers)).eval()
    with torch.no_grad():
        # Spread the logits: near-ties in an untrained model would make top-k order arbitrary.
        model.decoder.weight.mul_(30)
        model.embedding.weight.mul_(10)
    return model


def random_seqs(n: int, seed: int, max_len: int = 12) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


def alone(model: RNNLM, step: Step) -> StepResult:
    return run_steps(model, [step])[0]


def assert_same(a: StepResult, b: StepResult, tol: float = 1e-5) -> None:
    assert a.ids == b.ids
    assert a.probs == pytest.approx(b.probs, abs=tol)
    if a.state is not None or b.state is not None:
        pairs = (
            zip(a.state, b.state, strict=True)
            if isinstance(a.state, tuple)
            else [(a.state, b.state)]
        )
        for x, y in pairs:
            torch.testing.assert_close(x, y, atol=tol, rtol=0)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_one_padded_batch_equals_each_row_alone(arch: str) -> None:
    model = make_model(arch)
    seqs = random_seqs(17, seed=1)
    steps = [Step(ids=s, top_k=7, want_state=True) for s in seqs]
    batched = run_steps(model, steps)
    for step, got in zip(steps, batched, strict=True):
        assert_same(got, alone(model, step))
    # And against the model's own full forward, not just our code against itself.
    with torch.inference_mode():
        for seq, got in zip(seqs, batched, strict=True):
            logits, _ = model(torch.tensor([seq]))
            probs = torch.softmax(logits[0, -1], -1)
            top = torch.topk(probs, 7)
            assert got.ids == top.indices.tolist()
            assert got.probs == pytest.approx(top.values.tolist(), abs=1e-6)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_carried_states_in_a_mixed_batch(arch: str) -> None:
    """Rows resuming from a state, next to fresh rows, equal the whole text read at once."""
    model = make_model(arch, seed=2)
    seqs = random_seqs(9, seed=2, max_len=10)
    heads = [s[: max(1, len(s) // 2)] for s in seqs]
    tails = [s[len(h) :] or [3] for s, h in zip(seqs, heads, strict=True)]
    first = run_steps(model, [Step(ids=h, want_state=True) for h in heads])
    mixed = [Step(ids=t, state=r.state, top_k=5) for t, r in zip(tails, first, strict=True)]
    mixed += [Step(ids=s, top_k=5) for s in seqs[:4]]  # fresh rows in the same pass
    out = run_steps(model, mixed)
    for h, t, got in zip(heads, tails, out[: len(heads)], strict=True):
        assert_same(got, alone(model, Step(ids=h + t, top_k=5)))
    for s, got in zip(seqs[:4], out[len(heads) :], strict=True):
        assert_same(got, alone(model, Step(ids=s, top_k=5)))


def test_temperature_and_k_per_row() -> None:
    model = make_model("lstm")
    seq = [1, 2, 3, 4]
    out = run_steps(model, [Step(seq, top_k=3, temperature=0.5), Step(seq, top_k=VOCAB + 5)])
    with torch.inference_mode():
        logits = model(torch.tensor([seq]))[0][0, -1]
    hot = torch.topk(torch.softmax(logits / 0.5, -1), 3)
    assert out[0].probs == pytest.approx(hot.values.tolist(), abs=1e-6)
    assert len(out[1].ids) == VOCAB  # k is capped at the vocabulary size
    assert sum(out[1].probs) == pytest.approx(1.0, abs=1e-5)


def model_batch_fn(model: RNNLM, sizes: list[int] | None = None):  # type: ignore[no-untyped-def]
    def run(_key: str, steps: list[Step]) -> list[StepResult]:
        if sizes is not None:
            sizes.append(len(steps))
        return run_steps(model, steps)

    return run


async def test_burst_gets_each_its_own_answer() -> None:
    model = make_model("gru", seed=3)
    sizes: list[int] = []
    batcher = DynamicBatcher(model_batch_fn(model, sizes), max_batch_size=16, max_batch_delay_ms=5)
    seqs = random_seqs(100, seed=4)
    try:
        results = await asyncio.gather(*(batcher.submit("m", Step(s, top_k=4)) for s in seqs))
    finally:
        await batcher.close()
    for s, got in zip(seqs, results, strict=True):
        assert_same(got, alone(model, Step(s, top_k=4)))
    assert sum(sizes) == 100 and max(sizes) <= 16
    assert max(sizes) > 1  # the burst really was batched


async def test_batches_never_mix_keys() -> None:
    models = {"a": make_model("lstm", seed=5), "b": make_model("lstm", seed=6)}
    seen: list[tuple[str, int]] = []

    def run(key: str, steps: list[Step]) -> list[StepResult]:
        seen.append((key, len(steps)))
        return run_steps(models[key], steps)

    batcher = DynamicBatcher(run, max_batch_size=8, max_batch_delay_ms=2)
    seqs = random_seqs(40, seed=7)
    keys = ["a" if i % 3 else "b" for i in range(40)]
    try:
        results = await asyncio.gather(
            *(batcher.submit(k, Step(s, top_k=3)) for k, s in zip(keys, seqs, strict=True))
        )
    finally:
        await batcher.close()
    for k, s, got in zip(keys, seqs, results, strict=True):
        assert_same(got, alone(models[k], Step(s, top_k=3)))
    assert {k for k, _ in seen} == {"a", "b"}
    assert sum(n for _, n in seen) == 40


class Gate:
    """A batch function that holds the worker until released, to fill the queue on purpose."""

    def __init__(self, model: RNNLM) -> None:
        self.model = model
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, _key: str, steps: list[Step]) -> list[StepResult]:
        self.sizes.append(len(steps))
        self.entered.set()
        assert self.release.wait(10), "test never released the worker"
        return run_steps(self.model, steps)


async def wait_entered(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.entered.wait, 10)


@pytest.mark.parametrize("batch_size", [1, 4])
async def test_queue_full_is_refused_at_once_then_recovers(batch_size: int) -> None:
    model = make_model("rnn")
    gate = Gate(model)
    batcher = DynamicBatcher(gate, max_batch_size=batch_size, max_batch_delay_ms=0, max_queue=3)
    try:
        first = asyncio.ensure_future(batcher.submit("m", Step([1], top_k=2)))
        await wait_entered(gate)  # the worker is busy with `first`
        queued = [asyncio.ensure_future(batcher.submit("m", Step([2, i], top_k=2))) for i in (1, 2)]
        await asyncio.sleep(0)
        if batch_size == 1:
            # Batching off: the running call still counts, so the bound covers it too.
            assert batcher.queued == 3
        else:
            assert batcher.queued == 2
            queued.append(asyncio.ensure_future(batcher.submit("m", Step([2, 3], top_k=2))))
            await asyncio.sleep(0)
        with pytest.raises(QueueFull) as info:
            await batcher.submit("m", Step([4], top_k=2))
        assert info.value.retry_after_s >= 1
        with pytest.raises(QueueFull):
            await batcher.submit_many("m", [Step([4]), Step([5])])
        gate.release.set()
        results = await asyncio.gather(first, *queued)
        assert [r.ids for r in results[1:]] == [
            alone(model, Step([2, i], top_k=2)).ids for i in range(1, len(queued) + 1)
        ]
        # Room again once the queue drained.
        assert (await batcher.submit("m", Step([4], top_k=2))).ids == alone(
            model, Step([4], top_k=2)
        ).ids
    finally:
        gate.release.set()
        await batcher.close()


async def test_cancelled_requests_do_not_break_their_batch() -> None:
    model = make_model("lstm", seed=8)
    gate = Gate(model)
    batcher = DynamicBatcher(gate, max_batch_size=8, max_batch_delay_ms=0)
    seqs = random_seqs(6, seed=9)
    try:
        running = asyncio.ensure_future(batcher.submit("m", Step(seqs[0], top_k=3)))
        running_mate = asyncio.ensure_future(batcher.submit("m", Step(seqs[1], top_k=3)))
        await wait_entered(gate)
        waiting = [asyncio.ensure_future(batcher.submit("m", Step(s, top_k=3))) for s in seqs[2:]]
        await asyncio.sleep(0)
        running.cancel()  # its batch is already on the worker
        waiting[0].cancel()  # still in the queue
        gate.release.set()
        rest = await asyncio.gather(running_mate, *waiting[1:])
        expected = [alone(model, Step(s, top_k=3)) for s in [seqs[1], *seqs[3:]]]
        for got, want in zip(rest, expected, strict=True):
            assert_same(got, want)
        assert running.cancelled() and waiting[0].cancelled()
        assert gate.sizes == [2, 3]  # the cancelled waiter was skipped
        assert batcher.queued == 0
    finally:
        gate.release.set()
        await batcher.close()


async def test_a_failing_row_fails_alone() -> None:
    model = make_model("gru", seed=10)

    def run(_key: str, steps: list[Step]) -> list[StepResult]:
        if any(s.ids[0] == VOCAB - 1 for s in steps):
            raise ValueError("poisoned row")
        return run_steps(model, steps)

    batcher = DynamicBatcher(run, max_batch_size=8, max_batch_delay_ms=20)
    seqs = [[1, 2], [VOCAB - 1, 2], [3]]
    try:
        out = await asyncio.gather(
            *(batcher.submit("m", Step(s, top_k=2)) for s in seqs), return_exceptions=True
        )
    finally:
        await batcher.close()
    assert isinstance(out[1], ValueError)
    assert_same(out[0], alone(model, Step(seqs[0], top_k=2)))  # type: ignore[arg-type]
    assert_same(out[2], alone(model, Step(seqs[2], top_k=2)))  # type: ignore[arg-type]


async def test_batching_off_runs_one_row_per_pass() -> None:
    model = make_model("lstm", seed=11)
    sizes: list[int] = []
    hooked: list[int] = []
    batcher = DynamicBatcher(
        model_batch_fn(model, sizes),
        max_batch_size=1,
        on_batch=lambda _k, items, waits, _s: hooked.append(len(items)),
    )
    seqs = random_seqs(12, seed=12)
    try:
        out = await asyncio.gather(*(batcher.submit("m", Step(s, top_k=3)) for s in seqs))
        many = await batcher.submit_many("m", [Step(s, top_k=3) for s in seqs[:3]])
    finally:
        await batcher.close()
    assert sizes == [1] * 15 and hooked == [1] * 15
    for s, got in zip(seqs + seqs[:3], out + many, strict=True):
        assert_same(got, alone(model, Step(s, top_k=3)))


async def test_a_lone_request_does_not_wait_for_the_delay() -> None:
    model = make_model("rnn")
    waits: list[float] = []
    batcher = DynamicBatcher(
        model_batch_fn(model),
        max_batch_size=64,
        max_batch_delay_ms=1000,  # a lone request waiting this long would be obvious
        on_batch=lambda _k, _items, w, _s: waits.extend(w),
    )
    try:
        for i in range(3):  # one client, one request at a time
            await batcher.submit("m", Step([i + 1], top_k=1))
    finally:
        await batcher.close()
    assert len(waits) == 3 and max(waits) < 0.5


async def test_closed_loop_clients_fill_whole_batches() -> None:
    """Clients that send their next request a few ms after their answer (spread out, as
    HTTP clients are) are waited for: each round is one forward pass, not a trickle of small
    ones, although the first of them comes back 30 ms before the last."""
    model = make_model("lstm", seed=16)
    sizes: list[int] = []
    batcher = DynamicBatcher(
        model_batch_fn(model, sizes), max_batch_size=16, max_batch_delay_ms=2000
    )

    async def client(i: int) -> None:
        for round_ in range(4):
            if round_:
                await asyncio.sleep(0.002 * i)  # 0-30 ms between an answer and the next request
            got = await batcher.submit("m", Step([i + 1, round_ + 1], top_k=2))
            assert got.ids == alone(model, Step([i + 1, round_ + 1], top_k=2)).ids

    try:
        await asyncio.gather(*(client(i) for i in range(16)))
    finally:
        await batcher.close()
    assert sizes == [16, 16, 16, 16]


async def test_a_partial_batch_goes_at_the_delay_cap() -> None:
    """Rows expected but never sent (clients that stopped) hold a batch only until the cap."""
    model = make_model("gru", seed=17)
    sizes: list[int] = []
    batcher = DynamicBatcher(model_batch_fn(model, sizes), max_batch_size=16, max_batch_delay_ms=50)
    try:
        await asyncio.gather(*(batcher.submit("m", Step([i + 1])) for i in range(8)))
        # 8 were in flight: the next batch expects 8 rows, but only 3 ever come.
        await asyncio.gather(*(batcher.submit("m", Step([i + 1])) for i in range(3)))
    finally:
        await batcher.close()
    assert sizes == [8, 3]


async def test_hook_sees_every_item_with_its_wait() -> None:
    model = make_model("gru")
    records: list[tuple[str, int, list[float], float]] = []
    batcher = DynamicBatcher(
        model_batch_fn(model),
        max_batch_size=4,
        max_batch_delay_ms=1,
        on_batch=lambda k, items, waits, s: records.append((k, len(items), waits, s)),
    )
    try:
        await asyncio.gather(*(batcher.submit("m", Step([i % VOCAB + 1])) for i in range(10)))
    finally:
        await batcher.close()
    assert sum(n for _, n, _, _ in records) == 10
    assert all(n <= 4 and len(w) == n and min(w) >= 0 and s > 0 for _, n, w, s in records)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_half_precision_rows_and_states(arch: str, dtype: torch.dtype) -> None:
    """The --half steps (fp16 is served on CUDA only) run on CPU too: states keep the model's
    dtype and the probabilities come out float32, close to the float32 model's."""
    model = make_model(arch, seed=13)
    seqs = random_seqs(6, seed=14)
    want = run_steps(model, [Step(s, top_k=3) for s in seqs])
    model.to(dtype)
    first = run_steps(model, [Step(s[:1], want_state=True) for s in seqs])
    state = first[0].state[0] if isinstance(first[0].state, tuple) else first[0].state
    assert state.dtype == dtype
    got = run_steps(
        model,
        [Step(s[1:] or [1], state=r.state, top_k=3) for s, r in zip(seqs, first, strict=True)],
    )
    for g, w, s in zip(got, want, seqs, strict=True):
        if len(s) > 1:
            assert g.probs[0] == pytest.approx(w.probs[0], abs=0.05)


def test_warm_up_leaves_the_model_as_it_was() -> None:
    model = make_model("lstm", seed=15)
    before = run_steps(model, [Step([1, 2, 3], top_k=4)])[0]
    warm_up(model, (1, 4))
    assert_same(run_steps(model, [Step([1, 2, 3], top_k=4)])[0], before, tol=0)


def test_real_store_model_batches(tmp_path: Path) -> None:
    """The stored, reloaded model (what the server serves) batches the same way."""
    save_tiny_model(tmp_path, "m", "lstm", seed=3)
    loaded: LoadedModel = load_version(tmp_path, "m")
    enc = [loaded.tokenizer.encode(t).ids for t in ["the clouds are in the", "i speak", "the"]]
    batched = run_steps(loaded.model, [Step(e, top_k=5) for e in enc])
    for e, got in zip(enc, batched, strict=True):
        assert_same(got, alone(loaded.model, Step(e, top_k=5)))


# ---- over HTTP (the in-process app) ------------------------------------------------------

TEXTS = [
    "the clouds are in the",
    "i grew up in france . i speak fluent",
    "the keys to the old cabinet",
    "sky",
    "the key to the old cabinets is on the table . the",
    "i speak",
]


@pytest.fixture
async def serve() -> AsyncIterator:
    """The real app in-process, its lifespan run; yields (app, client) makers."""
    opened: list = []

    async def _start(model_dir: Path, **overrides: object) -> tuple[FastAPI, httpx.AsyncClient]:
        app = create_app(make_settings(model_dir, **overrides))
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        opened.append((lifespan, client))
        return app, client

    yield _start
    for lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def predict_body(i: int, model: str = "lstm") -> dict:
    return {"model": model, "text": TEXTS[i % len(TEXTS)] + " the" * (i % 4), "top_k": 30}


async def test_http_burst_batched_equals_unbatched(serve, tiny_store: Path) -> None:
    _, batched = await serve(tiny_store, max_batch_size=16, max_batch_delay_ms=5)
    _, single = await serve(tiny_store, max_batch_size=1)
    bodies = [predict_body(i, model) for i in range(36) for model in ("lstm", "gru")]
    before = batch_size_totals((await batched.get("/metrics")).text)
    answers = await asyncio.gather(*(batched.post("/predict", json=b) for b in bodies))
    after = batch_size_totals((await batched.get("/metrics")).text)
    for body, got in zip(bodies, answers, strict=True):
        want = (await single.post("/predict", json=body)).json()
        assert got.status_code == 200, got.text
        got_json = got.json()
        assert got_json["tokens"] == want["tokens"] and got_json["model"] == body["model"]
        got_dist = {p["word"]: p["prob"] for p in got_json["predictions"]}
        for p in want["predictions"]:
            assert got_dist[p["word"]] == pytest.approx(p["prob"], abs=1e-5)
    # (Prometheus metrics are process-wide: compare the scrape before and after the burst.)
    passes, rows = after[0] - before[0], after[1] - before[1]
    assert rows == len(bodies) and passes < rows  # every request counted, some shared a pass


def batch_size_totals(scrape: str) -> tuple[float, float]:
    """(forward passes, rows) summed over models, from gatehouse_batch_size."""
    count = total = 0.0
    for line in scrape.splitlines():
        if line.startswith("gatehouse_batch_size_count{"):
            count += float(line.split()[-1])
        elif line.startswith("gatehouse_batch_size_sum{"):
            total += float(line.split()[-1])
    return count, total


async def test_http_generate_is_the_same_batched_or_not(serve, tiny_store: Path) -> None:
    _, batched = await serve(tiny_store, max_batch_size=8, max_batch_delay_ms=5)
    _, single = await serve(tiny_store, max_batch_size=1)
    bodies = [
        {"model": "gru", "text": TEXTS[i], "max_words": 6, "temperature": 0.9, "seed": i}
        for i in range(len(TEXTS))
    ] + [{"model": "rnn", "text": t, "max_words": 5} for t in TEXTS]
    together = await asyncio.gather(*(batched.post("/generate", json=b) for b in bodies))
    for body, got in zip(bodies, together, strict=True):
        want = await single.post("/generate", json=body)
        assert got.status_code == want.status_code == 200
        assert got.json()["words"] == want.json()["words"]


async def test_http_full_queue_is_503_with_retry_after(serve, tiny_store: Path) -> None:
    # Batching off, so the three requests in flight are exactly the queue (the batched
    # queue bound is tested at the data plane above, where batch boundaries are controlled).
    app, client = await serve(tiny_store, max_batch_size=1, max_queue=3)
    engine = app.state.engine
    release = threading.Event()
    engine.executor.submit(release.wait, 30)  # the inference thread is busy
    try:
        waiting = [
            asyncio.ensure_future(client.post("/predict", json=predict_body(i))) for i in range(3)
        ]
        for _ in range(500):
            if engine.batcher.queued == 3:
                break
            await asyncio.sleep(0.01)
        assert engine.batcher.queued == 3
        r = await client.post("/predict", json=predict_body(5))
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["message"]
        opened = (await client.post("/sessions", json={"model": "lstm"})).json()
        sid, own = opened["session_id"], {"x-session-token": opened["session_token"]}
        r = await client.post(f"/sessions/{sid}/feed", json={"text": "the"}, headers=own)
        assert r.status_code == 503 and "retry-after" in r.headers
        info = await client.get(f"/sessions/{sid}", headers=own)
        assert info.json()["history_length"] == 0
    finally:
        release.set()
    assert [r.status_code for r in await asyncio.gather(*waiting)] == [200, 200, 200]
    assert (await client.post("/predict", json=predict_body(5))).status_code == 200


async def test_http_fp16_on_a_cpu_keeps_float32(serve, tiny_store: Path) -> None:
    app, half = await serve(tiny_store, half="fp16")
    _, full = await serve(tiny_store)
    body = {"model": "lstm", "text": TEXTS[1], "top_k": 5}
    got, want = [(await c.post("/predict", json=body)).json() for c in (half, full)]
    # float32 both: equal but for the decoder's summation order (tune_decoder picks by timing)
    assert [p["prob"] for p in got["predictions"]] == pytest.approx(
        [p["prob"] for p in want["predictions"]], abs=1e-6
    )
    loaded = app.state.registry.resolve("lstm")
    assert loaded.model.decoder.weight.dtype == torch.float32


async def test_http_bf16_serves_close_to_float32(serve, tiny_store: Path) -> None:
    _, half = await serve(tiny_store, half="bf16")
    _, full = await serve(tiny_store)
    body = {"model": "lstm", "text": TEXTS[1], "top_k": 5}
    got, want = [(await c.post("/predict", json=body)).json() for c in (half, full)]
    assert got["tokens"] == want["tokens"]
    assert [p["prob"] for p in got["predictions"]] == pytest.approx(
        [p["prob"] for p in want["predictions"]], abs=0.02
    )
    gates = await half.post("/gates", json={"model": "lstm", "text": TEXTS[0]})
    assert gates.status_code == 200, gates.text
    opened = (await half.post("/sessions", json={"model": "gru"})).json()
    fed = await half.post(
        f"/sessions/{opened['session_id']}/feed",
        json={"text": TEXTS[0]},
        headers={"x-session-token": opened["session_token"]},
    )
    assert fed.status_code == 200, fed.text
