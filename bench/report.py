"""The serving benchmark's tables, ratios and targets (issue 6 section 4), as Markdown."""

from __future__ import annotations

from dataclasses import dataclass, field

from .c1_check import C1Check
from .hey import LoadResult
from .raw import RawResult
from .session_latency import StepLatency


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    load: dict[str, dict[int, LoadResult]] = field(default_factory=dict)  # setup -> c -> result
    raw: list[RawResult] = field(default_factory=list)
    sessions: list[StepLatency] = field(default_factory=list)
    c1: C1Check | None = None  # the c=1 target, raw and server windows interleaved
    notes: list[str] = field(default_factory=list)


ON = "Gatehouse, batching on"
OFF = "Gatehouse, batching off"
PEER = "TorchServe, batched"
PEER_OFF = "TorchServe, unbatched"


def on_half(dtype: str) -> str:
    return f"{ON}, --half {dtype}"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def targets(r: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target that this run has the numbers for."""
    on, off, peer = r.load.get(ON, {}), r.load.get(OFF, {}), r.load.get(PEER, {})
    out: list[tuple[str, str, bool | None]] = []
    if 64 in on and 64 in peer:
        ratio = _ratio(on[64].rps, peer[64].rps)
        out.append(("batching on >= TorchServe req/s at c=64", f"{ratio:.2f}x", ratio >= 1.0))
        p_on, p_peer = on[64].p(99), peer[64].p(99)
        if p_on is not None and p_peer is not None:
            out.append(
                (
                    "batching on p99 <= TorchServe p99 at c=64",
                    f"{_ms(p_on)} vs {_ms(p_peer)} ms",
                    p_on <= p_peer,
                )
            )
    if 64 in on and 64 in off:
        ratio = _ratio(on[64].rps, off[64].rps)
        out.append(("batching on >= 3x batching off req/s at c=64", f"{ratio:.2f}x", ratio >= 3))
    if r.c1 is not None:
        c1 = r.c1
        out.append(
            (
                "p99 at c=1 within 5 ms of a raw single forward (p50), interleaved windows",
                f"{c1.gap * 1000:+.1f} ms ({_ms(c1.server_p99)} vs {_ms(c1.raw_p50)}; "
                f"the raw loop's own p99 {_ms(c1.raw_p99)})",
                c1.gap <= 0.005,
            )
        )
        out.append(
            (
                "p99 at c=1 within 5 ms of the raw forward's own p99 (what the server adds)",
                f"{c1.tail_gap * 1000:+.1f} ms",
                c1.tail_gap <= 0.005,
            )
        )
    by_h = {s.history: s for s in r.sessions}
    if len(by_h) >= 2:
        short, long = by_h[min(by_h)], by_h[max(by_h)]
        ratio = long.p50 / short.p50
        out.append(
            (
                f"session step at history {long.history} <= 1.2x history {short.history}",
                f"{ratio:.2f}x",
                ratio <= 1.2,
            )
        )
    ours = [res for name in (ON, OFF) for res in r.load.get(name, {}).values()]
    failed = sum(res.failed for res in ours) + (r.c1.failed if r.c1 else 0)
    ok = sum(x.ok for x in ours) + (r.c1.server_n if r.c1 else 0)
    out.append(("no errors (Gatehouse runs)", f"{failed} failed of {ok + failed}", failed == 0))
    return out


def markdown(r: Results) -> str:
    lines = ["### Machine", ""]
    lines += [f"- {k}: {v}" for k, v in r.machine.items()]
    lines += ["", f"Command: `{r.command}`", ""]
    lines += [
        "### HTTP load (hey, closed loop, 9-token requests, top-5)",
        "",
        "| setup | concurrency | req/s | p50 ms | p95 ms | p99 ms | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_c in r.load.items():
        for c in sorted(by_c):
            x = by_c[c]
            lines.append(
                f"| {name} | {c} | {x.rps:.1f} | {_ms(x.p(50))} | {_ms(x.p(95))} | "
                f"{_ms(x.p(99))} | {x.failed} |"
            )
    if r.raw:
        lines += [
            "",
            "### Raw model in-process (no HTTP; softmax + top-5 included)",
            "",
            "| dtype | batch | queries/s | p50 ms per pass | p99 ms per pass |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {x.dtype} | {x.batch} | {x.qps:.1f} | {_ms(x.p50)} | {_ms(x.p99)} |" for x in r.raw
        ]
    if r.sessions:
        lines += [
            "",
            "### Session steps (one word per feed, over HTTP, one client)",
            "",
            "| history (tokens) | steps | p50 ms | p90 ms | /predict on all of it, p50 ms |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s.history} | {s.steps} | {_ms(s.p50)} | {_ms(s.p90)} | {_ms(s.predict_p50)} |"
            for s in r.sessions
        ]
    if r.c1 is not None:
        c1 = r.c1
        lines += [
            "",
            f"### c=1 against the raw floor, interleaved ({c1.rounds} rounds of "
            f"{c1.window_s:g} s raw batch-1 passes, then {c1.window_s:g} s of one HTTP client)",
            "",
            "| side | samples | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
            f"| raw model, batch 1 | {c1.raw_n} | {_ms(c1.raw_p50)} | {_ms(c1.raw_p99)} |",
            f"| Gatehouse, c=1 | {c1.server_n} | {_ms(c1.server_p50)} | {_ms(c1.server_p99)} |",
        ]
    ratios = _ratios(r)
    if ratios:
        lines += ["", "### Ratios (same run)", ""] + [f"- {x}" for x in ratios]
    lines += [
        "",
        "### Targets (issue 6, section 4)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, measured, met in targets(r):
        lines.append(f"| {name} | {measured} | {'yes' if met else 'NO'} |")
    if r.notes:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in r.notes]
    return "\n".join(lines) + "\n"


def _ratios(r: Results) -> list[str]:
    out = []
    off, peer = r.load.get(OFF, {}), r.load.get(PEER, {})
    peer_off = r.load.get(PEER_OFF, {})
    raw = {x.batch: x for x in r.raw if x.dtype == "float32"}
    for name in [n for n in r.load if n == ON or n.startswith(on_half(""))]:
        on = r.load[name]
        for c in sorted(on):
            parts = []
            if c in off:
                parts.append(f"{on[c].rps / off[c].rps:.2f}x batching off")
            if c in peer:
                parts.append(f"{on[c].rps / peer[c].rps:.2f}x TorchServe batched")
            if c in peer_off:
                parts.append(f"{on[c].rps / peer_off[c].rps:.2f}x TorchServe unbatched")
            if c in raw:
                parts.append(f"{on[c].rps / raw[c].qps:.2f}x the float32 raw model at batch {c}")
            if parts:
                out.append(f"{name}, c={c}: " + ", ".join(parts))
    return out
