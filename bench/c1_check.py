"""The c=1 latency target, measured fairly on a shared machine: windows of raw batch-1 passes
(in this process) alternate with windows of one-client HTTP load on the server, and each side's
percentiles come from all of its windows pooled.

Why interleave: on a VM whose memory bandwidth is shared with neighbours, a floor measured a
minute before the server's load is not the floor that the server met. Alternating puts both in
the same conditions; the raw loop's own p99 from the same windows shows how much of the
server's tail the machine alone accounts for.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.lm import RNNLM

from . import hey, raw


@dataclass
class C1Check:
    rounds: int
    window_s: float
    raw_n: int
    raw_p50: float  # seconds
    raw_p99: float
    server_n: int
    server_p50: float
    server_p99: float
    failed: int

    @property
    def gap(self) -> float:
        """The target's figure: the server's p99 over a raw single forward (p50)."""
        return self.server_p99 - self.raw_p50

    @property
    def tail_gap(self) -> float:
        """What the server adds at the tail: its p99 over the raw loop's own p99. The target's
        figure also counts the machine's jitter, which the raw loop shows by itself."""
        return self.server_p99 - self.raw_p99


def measure(model: RNNLM, url: str, body: str, rounds: int = 6, window_s: float = 3.0) -> C1Check:
    raw_times: list[float] = []
    server_times: list[float] = []
    failed = 0
    for _ in range(rounds):
        raw_times += raw.pass_times(model, 1, seconds=window_s)
        ok, bad = hey.latencies(url, body, 1, window_s)
        server_times += ok
        failed += bad
    raw_times.sort()
    server_times.sort()
    if not server_times:
        raise RuntimeError(f"no successful request in {rounds} windows at c=1 ({failed} failed)")
    return C1Check(
        rounds=rounds,
        window_s=window_s,
        raw_n=len(raw_times),
        raw_p50=raw.percentile(raw_times, 0.5),
        raw_p99=raw.percentile(raw_times, 0.99),
        server_n=len(server_times),
        server_p50=raw.percentile(server_times, 0.5),
        server_p99=raw.percentile(server_times, 0.99),
        failed=failed,
    )
