"""Garbage-collector pauses as a histogram, and the frozen-heap size as a gauge.

A full (generation 2) collection stops every thread that needs the GIL, the event loop
included. Before the start-up heap was frozen (`freeze_heap`), each one walked the ~330,000
objects of torch, pydantic, FastAPI and the models: 100-150 ms, every ~1.4 s under load, which
was the whole p95/p99 tail of `/predict` at concurrency 64. These series keep that visible.

The timing runs inside `gc.callbacks`, where taking a lock is unsafe (the collection may have
started inside code that holds the very same lock, say a histogram's). So the callback only
bumps plain lists, and the Prometheus families are built from them at scrape time. Collections
never overlap (CPython runs one at a time, under the GIL), so the callback has one writer.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Young collections take tens of microseconds; an unfrozen full one took up to ~150 ms here.
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GENERATIONS = 3


def freeze_heap() -> int:
    """Collect, then move every surviving object to the permanent generation, so later full
    collections skip it. Called once the server holds its long-lived state (modules, models,
    the app); returns how many objects are frozen. Frozen objects are still freed by their
    reference counts; only a cycle among them would outlive its last reference."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauseCollector(Collector):
    """Install with `REGISTRY.register(GcPauseCollector())`; `close()` removes the callback."""

    def __init__(self) -> None:
        self._counts = [[0] * (len(GC_BUCKETS) + 1) for _ in range(GENERATIONS)]
        self._sums = [0.0] * GENERATIONS
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 0)
        if not 0 <= generation < GENERATIONS or self._started == 0.0:
            return
        seconds = time.perf_counter() - self._started
        self._counts[generation][bisect.bisect_left(GC_BUCKETS, seconds)] += 1
        self._sums[generation] += seconds

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        pauses, frozen = self._families()
        for generation in range(GENERATIONS):
            # Copied together: a collection landing meanwhile must not put _sum ahead of _count.
            counts, total = list(self._counts[generation]), self._sums[generation]
            cumulative, buckets = 0, []
            for bound, n in zip((*GC_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            pauses.add_metric([str(generation)], buckets, total)
        frozen.add_metric([], float(gc.get_freeze_count()))
        return [pauses, frozen]

    @staticmethod
    def _families() -> tuple[HistogramMetricFamily, GaugeMetricFamily]:
        return (
            HistogramMetricFamily(
                "gatehouse_gc_pause_seconds",
                "Time each garbage collection stopped the process, by generation.",
                labels=["generation"],
            ),
            GaugeMetricFamily(
                "gatehouse_gc_frozen_objects",
                "Objects in the permanent generation, skipped by every collection.",
            ),
        )
