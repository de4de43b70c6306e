"""The SSE fan-out: a slow reader loses old progress, never the end; shutdown ends streams."""

from __future__ import annotations

import json
from typing import Any

from service.jobs import events


def parse(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in chunks:
        text = chunk.decode()
        if text.startswith(":"):
            continue
        head, data = text.strip().split("\n")
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_a_slow_reader_keeps_the_newest_progress_and_the_end() -> None:
    hub = events.EventHub()
    state = {"job_id": "j", "status": "running"}

    async def snapshot() -> dict[str, Any]:
        return dict(state)

    stream = events.stream(hub, "j", snapshot)
    chunks = [await anext(stream)]  # subscribed; the current state came first
    for step in range(500):  # far more than the queue holds, nobody reading
        hub.publish("j", "progress", {"step": step, "loss": float("nan")})
    state["status"] = "succeeded"
    hub.end("j")
    chunks += [c async for c in stream]
    got = parse(chunks)
    assert got[0] == ("status", {"job_id": "j", "status": "running"})
    assert got[-1] == ("end", {"job_id": "j", "status": "succeeded"})
    steps = [d["step"] for k, d in got if k == "progress"]
    assert steps == sorted(steps) and steps[-1] == 499 and len(steps) < 500
    assert got[1][1]["loss"] is None  # NaN has no JSON spelling
    assert hub.subscribers("j") == 0


async def test_a_finished_job_streams_its_record_and_ends() -> None:
    hub = events.EventHub()

    async def snapshot() -> dict[str, Any]:
        return {"job_id": "k", "status": "failed", "error": "boom"}

    got = parse([c async for c in events.stream(hub, "k", snapshot)])
    assert [k for k, _ in got] == ["status", "end"]
    assert hub.subscribers("k") == 0


async def test_closing_the_hub_ends_open_and_later_streams() -> None:
    hub = events.EventHub()

    async def snapshot() -> dict[str, Any]:
        return {"job_id": "m", "status": "running"}

    open_stream = events.stream(hub, "m", snapshot)
    first = await anext(open_stream)
    hub.close()
    rest = [c async for c in open_stream]
    assert [k for k, _ in parse([first, *rest])] == ["status", "end"]
    later = [c async for c in events.stream(hub, "m", snapshot)]
    assert [k for k, _ in parse(later)] == ["status", "end"]
