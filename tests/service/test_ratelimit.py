"""The per-client token bucket behind the session rate limit, on a hand-driven clock."""

from __future__ import annotations

import pytest

from service.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limit = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limit.take("a") for _ in range(3)] == [None, None, None]
    wait = limit.take("a")
    assert wait == pytest.approx(0.5)
    clock.now += 0.5
    assert limit.take("a") is None and limit.take("a") is not None
    assert limit.take("b") is None  # another client has its own bucket
    clock.now += 60  # refills to the burst, never beyond
    assert [limit.take("a") for _ in range(4)].count(None) == 3


def test_rate_zero_is_no_limit_and_bad_values_are_refused() -> None:
    limit = RateLimiter(rate=0, burst=1)
    assert all(limit.take("a") is None for _ in range(1000))
    with pytest.raises(ValueError):
        RateLimiter(rate=-1, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0)


def test_memory_stays_bounded_by_forgetting_refilled_clients() -> None:
    clock = Clock()
    limit = RateLimiter(rate=1.0, burst=2, clock=clock, max_clients=100)
    for i in range(100):
        limit.take(f"old-{i}")
    clock.now += 10  # every old bucket has refilled: the same as none
    for i in range(50):
        limit.take(f"new-{i}")
    assert len(limit._buckets) <= 100
    assert limit.take("old-0") is None  # forgotten means full, not refused
