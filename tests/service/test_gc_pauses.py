"""GC pause metrics and the start-up heap freeze (service/metrics/gc_pauses.py)."""

from __future__ import annotations

import gc
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from models import store
from service.app import create_app
from service.metrics import REGISTRY
from service.metrics.gc_pauses import GC_BUCKETS, GcPauseCollector, freeze_heap
from tests.helpers import save_tiny_model
from tests.service.conftest import make_settings


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen, as every app leaves it when it stops."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.startswith(name):
                out[(s.name, s.labels.get("generation", "") + s.labels.get("le", ""))] = s.value
    return out


def test_a_full_collection_is_timed_in_generation_2() -> None:
    registry = CollectorRegistry()
    collector = GcPauseCollector()
    registry.register(collector)
    try:
        before = registry.get_sample_value("gatehouse_gc_pause_seconds_count", {"generation": "2"})
        gc.collect(2)
        gc.collect(2)
        after = registry.get_sample_value("gatehouse_gc_pause_seconds_count", {"generation": "2"})
        total = registry.get_sample_value("gatehouse_gc_pause_seconds_sum", {"generation": "2"})
    finally:
        collector.close()
    assert before == 0 and after == 2
    assert total is not None and total > 0
    assert collector._on_gc not in gc.callbacks


def test_buckets_are_cumulative_and_end_in_the_count() -> None:
    registry = CollectorRegistry()
    collector = GcPauseCollector()
    registry.register(collector)
    try:
        for generation in (0, 1, 2, 0):
            gc.collect(generation)
        got = samples(registry, "gatehouse_gc_pause_seconds")
    finally:
        collector.close()
    for generation in "012":
        counts = [
            got[("gatehouse_gc_pause_seconds_bucket", generation + repr(b))] for b in GC_BUCKETS
        ]
        inf = got[("gatehouse_gc_pause_seconds_bucket", generation + "+Inf")]
        assert counts == sorted(counts) and counts[-1] <= inf
        assert inf == got[("gatehouse_gc_pause_seconds_count", generation)]
    assert got[("gatehouse_gc_pause_seconds_count", "0")] >= 2


def test_freezing_takes_the_heap_out_of_full_collections(unfrozen: None) -> None:
    assert gc.get_freeze_count() == 0
    tracked = len(gc.get_objects())
    frozen = freeze_heap()
    # torch, FastAPI and pydantic leave ~300,000 tracked objects behind.
    assert frozen > 100_000 and frozen >= tracked // 2
    assert len(gc.get_objects()) < frozen // 100  # what a full collection still walks
    assert REGISTRY.get_sample_value("gatehouse_gc_frozen_objects") == gc.get_freeze_count()


def test_a_model_loaded_before_the_freeze_is_freed_when_dropped(
    unfrozen: None, tiny_store: Path
) -> None:
    # The registry drops replaced versions and relies on reference counts to free them:
    # frozen objects are never collected, so a model must not hold itself in a cycle.
    loaded = store.load_version(tiny_store, "lstm")
    refs = [weakref.ref(loaded.model), weakref.ref(loaded.tokenizer)]
    freeze_heap()
    del loaded
    assert [r() for r in refs] == [None, None]


async def test_the_app_freezes_its_heap_while_it_runs(unfrozen: None, tiny_store: Path) -> None:
    app = create_app(make_settings(tiny_store))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > 100_000
        async with client_for(app) as client:
            assert (await client.get("/readyz")).status_code == 200
            text = (await client.get("/metrics")).text
        assert 'gatehouse_gc_pause_seconds_bucket{generation="2",le="+Inf"}' in text
        assert "gatehouse_gc_frozen_objects " in text
    # Stopped: what it held goes back to the collector (tests build many apps in one process).
    assert gc.get_freeze_count() == 0


async def test_a_replaced_version_is_freed_despite_the_freeze(
    unfrozen: None, tiny_store: Path, tmp_path: Path
) -> None:
    # Frozen objects are never collected, only freed by reference counts: the version the
    # server loaded at start (warmed up, served, then replaced) must hold itself in no cycle.
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    app = create_app(make_settings(model_dir))
    body = {"model": "lstm", "text": "the sky is", "top_k": 3}
    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.post("/predict", json=body)).status_code == 200
        registry = app.state.registry
        first = weakref.ref(registry.resolve("lstm").model)
        assert gc.get_freeze_count() > 0
        save_tiny_model(model_dir, "lstm", "lstm", seed=1)
        registry.refresh()
        assert registry.resolve("lstm").version == 2
        # The batcher lets go of its previous batch when the next one comes.
        assert (await client.post("/predict", json=body)).json()["version"] == 2
        assert first() is None
