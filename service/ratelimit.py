"""A token bucket per client: `rate` events per second on average, `burst` at once."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        if rate < 0 or burst < 1:
            raise ValueError("rate must be >= 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)

    def take(self, client: str) -> float | None:
        """Spend one token of `client`'s bucket: None when allowed, else the seconds until
        the next token (rate 0 turns the limit off)."""
        if self.rate == 0:
            return None
        now = self._clock()
        tokens, at = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > self._max_clients:
            self._forget_full(now)
        return None

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket: dropping it bounds the memory
        # many one-off clients would otherwise take.
        refill = self.burst / self.rate
        for client, (_, at) in list(self._buckets.items()):
            if now - at >= refill:
                del self._buckets[client]
