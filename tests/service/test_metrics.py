"""Metrics module: the HTTP middleware on a real FastAPI app and raw ASGI, and every helper.

The registry is process-wide, so every check reads a delta or uses label values unique to it.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from service import logs, metrics
from service.metrics import REGISTRY, MetricsMiddleware
from service.metrics.exemplars import exemplar_labels, trace_id_from


def value(name: str, **labels: str) -> float:
    v = REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def exists(name: str, **labels: str) -> bool:
    return REGISTRY.get_sample_value(name, labels) is not None


def exposition_names() -> set[str]:
    return {fam.name for fam in text_string_to_metric_families(metrics.render().decode())}


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.post("/train", status_code=202)
    async def train() -> dict[str, str]:
        return {"status": "queued"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    metrics.install(app)
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


DURATION_COUNT = "gatehouse_http_request_duration_seconds_count"
RESPONSES = "gatehouse_http_responses_total"


async def test_request_counts_follow_route_templates_exactly() -> None:
    app = make_app()
    route = {"route": "/items/{item_id}", "method": "GET", "status": "200"}
    before_route = value(DURATION_COUNT, **route)
    before_2xx = value("gatehouse_http_responses_total", status_class="2xx")
    before_4xx = value("gatehouse_http_responses_total", status_class="4xx")
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    before_unmatched = value(DURATION_COUNT, **unmatched)
    async with client(app) as c:
        for i in range(7):
            assert (await c.get(f"/items/{i}")).status_code == 200
        for i in range(3):
            assert (await c.get(f"/nowhere/{uuid.uuid4().hex}/{i}")).status_code == 404
    assert value(DURATION_COUNT, **route) - before_route == 7
    assert value(DURATION_COUNT, **unmatched) - before_unmatched == 3
    assert value("gatehouse_http_responses_total", status_class="2xx") - before_2xx == 7
    assert value("gatehouse_http_responses_total", status_class="4xx") - before_4xx == 3
    # Raw paths never become label values: cardinality stays bounded by the route table.
    text = metrics.render().decode()
    assert "/items/3" not in text and "/nowhere/" not in text


async def test_series_exist_before_first_request() -> None:
    make_app()
    # Documented success status per route, initialised at install time.
    assert exists(DURATION_COUNT, route="/train", method="POST", status="202")
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert exists("gatehouse_http_responses_total", status_class=cls)
    for state in metrics.JOB_STATES:
        assert exists("gatehouse_training_jobs", state=state)


async def test_unhandled_exception_counts_as_500_and_in_flight_returns() -> None:
    app = make_app()
    labels = {"route": "/boom", "method": "GET", "status": "500"}
    before = value(DURATION_COUNT, **labels)
    in_flight = value("gatehouse_http_requests_in_flight")
    async with client(app) as c:
        assert (await c.get("/boom")).status_code == 500
    assert value(DURATION_COUNT, **labels) - before == 1
    assert value("gatehouse_http_requests_in_flight") == in_flight


async def test_unknown_method_label_is_bounded() -> None:
    app = make_app()
    labels = {"route": "/items/{item_id}", "method": "other", "status": "405"}
    before = value(DURATION_COUNT, **labels)
    async with client(app) as c:
        assert (await c.request("BREW", "/items/1")).status_code == 405
    assert value(DURATION_COUNT, **labels) - before == 1


async def test_metrics_endpoint_content_type_and_hidden_from_openapi() -> None:
    app = make_app()
    async with client(app) as c:
        r = await c.get("/metrics")
        spec = (await c.get("/openapi.json")).json()
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE gatehouse_http_request_duration_seconds histogram" in r.text
    assert "/metrics" not in spec["paths"]


async def test_install_is_idempotent_and_apps_can_be_rebuilt() -> None:
    apps = [make_app() for _ in range(3)]
    metrics.install(apps[0])
    metrics.install(apps[0])
    assert [r.path for r in apps[0].routes].count("/metrics") == 1
    assert [m.cls for m in apps[0].user_middleware].count(MetricsMiddleware) == 1


async def test_in_flight_while_a_request_runs() -> None:
    app = FastAPI()
    release = asyncio.Event()
    entered = asyncio.Event()

    @app.get("/slow")
    async def slow() -> dict[str, bool]:
        entered.set()
        await release.wait()
        return {"ok": True}

    metrics.install(app)
    base = value("gatehouse_http_requests_in_flight")
    async with client(app) as c:
        task = asyncio.create_task(c.get("/slow"))
        await asyncio.wait_for(entered.wait(), 5)
        assert value("gatehouse_http_requests_in_flight") == base + 1
        release.set()
        assert (await task).status_code == 200
    assert value("gatehouse_http_requests_in_flight") == base


# Raw ASGI from here: httpx's in-process transport buffers whole responses, which would hide
# what the middleware does while a stream is still open.


def http_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}


async def receive() -> dict[str, Any]:
    await asyncio.sleep(3600)
    return {"type": "http.disconnect"}


async def test_event_stream_leaves_in_flight_at_headers_and_closes_cleanly() -> None:
    more = asyncio.Event()
    sent: list[dict[str, Any]] = []

    async def sse_app(scope: Any, rcv: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await more.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    mw = MetricsMiddleware(sse_app)
    labels = {"route": "unmatched", "method": "GET", "status": "200"}
    before = value(DURATION_COUNT, **labels)
    in_flight = value("gatehouse_http_requests_in_flight")
    streams = value("gatehouse_http_streams_open")
    task = asyncio.create_task(mw(http_scope("/events"), receive, send))
    for _ in range(100):
        if len(sent) >= 2:
            break
        await asyncio.sleep(0.01)
    # The first event reached the client before the stream ended: nothing is buffered.
    assert sent[1]["body"] == b"data: 1\n\n"
    assert value("gatehouse_http_requests_in_flight") == in_flight
    assert value("gatehouse_http_streams_open") == streams + 1
    assert value(DURATION_COUNT, **labels) - before == 1
    more.set()
    await asyncio.wait_for(task, 5)
    assert value("gatehouse_http_streams_open") == streams
    assert value("gatehouse_http_requests_in_flight") == in_flight
    assert value(DURATION_COUNT, **labels) - before == 1  # observed once, at the headers


async def test_cancelled_request_still_leaves_in_flight() -> None:
    started = asyncio.Event()

    async def hanging_app(scope: Any, rcv: Any, send: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    async def send(message: dict[str, Any]) -> None:
        pass

    in_flight = value("gatehouse_http_requests_in_flight")
    gone = {"route": "unmatched", "method": "GET", "status": "499"}
    before, before_5xx = value(DURATION_COUNT, **gone), value(RESPONSES, status_class="5xx")
    task = asyncio.create_task(MetricsMiddleware(hanging_app)(http_scope("/x"), receive, send))
    await asyncio.wait_for(started.wait(), 5)
    assert value("gatehouse_http_requests_in_flight") == in_flight + 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value("gatehouse_http_requests_in_flight") == in_flight
    # A client that went away is not a server error.
    assert value(DURATION_COUNT, **gone) - before == 1
    assert value(RESPONSES, status_class="5xx") == before_5xx


# Helpers called by the other layers.


def test_observe_batch_counts_every_request_of_the_pass() -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    lab = {"model": name, "arch": "gru", "version": "3"}
    waits = [0.001, 0.002, 0.003, 0.002, -0.5]  # a clock step backwards counts as 0
    metrics.observe_batch(name, "gru", 3, waits, 0.010, [9, 9, 4, 1, 7])
    metrics.observe_batch(name, "gru", 3, [0.004], 0.020, [3])
    assert value("gatehouse_inference_queue_seconds_count", **lab) == 6
    assert value("gatehouse_inference_queue_seconds_sum", **lab) == pytest.approx(0.012)
    assert value("gatehouse_inference_compute_seconds_sum", **lab) == pytest.approx(0.070)
    assert value("gatehouse_inference_duration_seconds_sum", **lab) == pytest.approx(0.082)
    assert value("gatehouse_inference_compute_seconds_bucket", **lab, le="0.01") == 5
    assert value("gatehouse_inference_predictions_total", **lab) == 6
    assert value("gatehouse_inference_tokens_total", **lab) == 33
    assert value("gatehouse_batch_size_count", **lab) == 2
    assert value("gatehouse_batch_size_bucket", **lab, le="4.0") == 1
    assert value("gatehouse_batch_size_bucket", **lab, le="8.0") == 2


def test_model_info_newest_version_wins() -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    metrics.model_loaded(name, "lstm", 1, "cpu", 1234, 0.05)
    info1 = {"model": name, "arch": "lstm", "version": "1", "device": "cpu"}
    assert value("gatehouse_model_info", **info1) == 1
    # Zero-valued series exist as soon as the model is loaded.
    lab1 = {"model": name, "arch": "lstm", "version": "1"}
    assert REGISTRY.get_sample_value("gatehouse_inference_predictions_total", lab1) == 0
    assert REGISTRY.get_sample_value("gatehouse_sessions_active", {"model": name}) == 0
    assert (
        REGISTRY.get_sample_value(
            "gatehouse_model_load_failures_total", {"model": name, "reason": "corrupt"}
        )
        == 0
    )

    metrics.model_loaded(name, "lstm", 2, "cpu", 5678, 0.05)
    info2 = {**info1, "version": "2"}
    assert REGISTRY.get_sample_value("gatehouse_model_info", info1) is None
    assert value("gatehouse_model_info", **info2) == 1
    assert value("gatehouse_model_parameters", model=name, arch="lstm", version="2") == 5678

    # An older version loaded later (a pinned request) does not take the info series back.
    metrics.model_loaded(name, "lstm", 1, "cpu", 1234, 0.05)
    assert REGISTRY.get_sample_value("gatehouse_model_info", info1) is None
    assert value("gatehouse_model_info", **info2) == 1
    assert value("gatehouse_model_load_duration_seconds_count", model=name) == 3

    metrics.model_unloaded(name)
    assert REGISTRY.get_sample_value("gatehouse_model_info", info2) is None
    assert REGISTRY.get_sample_value("gatehouse_sessions_active", {"model": name}) is None


def test_load_failure_reasons_are_a_fixed_set() -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    metrics.model_load_failed(name, "corrupt")
    metrics.model_load_failed(name, "something the registry made up")
    assert value("gatehouse_model_load_failures_total", model=name, reason="corrupt") == 1
    assert value("gatehouse_model_load_failures_total", model=name, reason="other") == 1
    assert "something the registry made up" not in metrics.render().decode()


def test_sessions_and_job_states() -> None:
    name = f"m-{uuid.uuid4().hex[:8]}"
    metrics.set_sessions_active(name, 4)
    assert value("gatehouse_sessions_active", model=name) == 4
    metrics.set_jobs_by_state({"running": 1, "queued": 2})
    assert value("gatehouse_training_jobs", state="running") == 1
    assert value("gatehouse_training_jobs", state="queued") == 2
    metrics.set_jobs_by_state({"queued": 1})
    assert value("gatehouse_training_jobs", state="running") == 0
    assert value("gatehouse_training_jobs", state="queued") == 1


def test_job_progress_gauges_go_and_counters_add_up() -> None:
    job = uuid.uuid4().hex
    lab = {"job_id": job, "model": "my-gru", "arch": "gru"}
    metrics.job_progress(job, "my-gru", "gru", 0.25, loss=5.5, val_ppl=None, tokens=640, steps=4)
    assert value("gatehouse_training_job_progress_ratio", **lab) == 0.25
    assert value("gatehouse_training_job_loss", **lab) == 5.5
    assert REGISTRY.get_sample_value("gatehouse_training_job_validation_perplexity", lab) is None
    metrics.job_progress(job, "my-gru", "gru", 0.5, loss=4.0, val_ppl=120.0, tokens=320, steps=2)
    metrics.job_progress(job, "my-gru", "gru", 0.5, loss=None, val_ppl=None, tokens=-5, steps=0)
    assert value("gatehouse_training_job_validation_perplexity", **lab) == 120.0
    assert value("gatehouse_training_job_loss", **lab) == 4.0
    assert value("gatehouse_training_job_tokens_total", **lab) == 960  # a negative adds nothing
    assert value("gatehouse_training_job_steps_total", **lab) == 6
    before = value("gatehouse_training_job_duration_seconds_count", status="succeeded")
    metrics.job_finished(job, "succeeded", 42.0)
    assert value("gatehouse_training_job_duration_seconds_count", status="succeeded") == before + 1
    # The gauges go at once; the counters stay for the next scrape to read their last value.
    assert REGISTRY.get_sample_value("gatehouse_training_job_progress_ratio", lab) is None
    assert value("gatehouse_training_job_tokens_total", **lab) == 960
    assert "gatehouse_training_job_tokens_per_second" not in metrics.render().decode()


def test_finished_jobs_counters_are_bounded() -> None:
    jobs = [uuid.uuid4().hex for _ in range(metrics.FINISHED_JOBS_KEPT + 3)]
    for job in jobs:
        metrics.job_progress(job, "m", "rnn", 1.0, loss=None, val_ppl=None, tokens=10, steps=1)
        metrics.job_finished(job, "cancelled", 1.0)
    text = metrics.render().decode()
    assert [job in text for job in jobs] == [False] * 3 + [True] * metrics.FINISHED_JOBS_KEPT


def test_batch_limit_gauge() -> None:
    metrics.set_batch_limit(48)
    assert value("gatehouse_batch_size_limit") == 48


# Exemplars and OpenMetrics.

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f" 00-{TRACE}-00f067aa0ba902b7-00 ", TRACE),  # surrounding blanks are tolerated
        (f"01-{TRACE}-00f067aa0ba902b7-01-future-field", TRACE),  # later versions may extend
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 may not
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # upper-case hex
        (f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", None),
        ("garbage", None),
    ],
)
def test_traceparent_parsing(header: str, trace_id: str | None) -> None:
    scope = {"headers": [(b"traceparent", header.encode())]}
    assert trace_id_from(scope) == trace_id


def test_exemplar_labels_stay_within_the_openmetrics_cap() -> None:
    assert exemplar_labels("abc", None) == {"request_id": "abc"}
    assert exemplar_labels(None, TRACE) == {"trace_id": TRACE}
    assert exemplar_labels(None, None) is None
    fits = "r" * (128 - len("request_id") - len("trace_id") - 32)
    assert exemplar_labels(fits, TRACE) == {"trace_id": TRACE, "request_id": fits}
    # One character more: the id is left out whole, never cut.
    assert exemplar_labels(fits + "r", TRACE) == {"trace_id": TRACE}
    assert exemplar_labels("r" * 118, None) == {"request_id": "r" * 118}


OPENMETRICS = "application/openmetrics-text; version=1.0.0"


async def test_openmetrics_is_negotiated_and_carries_exemplars() -> None:
    app = make_app()
    logs.install(app)  # sets the request id the exemplar names
    rid = uuid.uuid4().hex
    headers = {"x-request-id": rid, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
    async with client(app) as c:
        assert (await c.get("/items/7", headers=headers)).status_code == 200
        plain = await c.get("/metrics")
        om = await c.get("/metrics", headers={"accept": OPENMETRICS})
    assert plain.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in plain.text and rid not in plain.text
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(om.text)}
    hist = families["gatehouse_http_request_duration_seconds"]
    found = [
        s.exemplar
        for s in hist.samples
        if s.exemplar is not None and s.labels.get("route") == "/items/{item_id}"
    ]
    assert any(e.labels == {"request_id": rid, "trace_id": TRACE} for e in found), found
    # Counters keep their _total sample names, so queries are the same in both formats.
    assert any(
        s.name == "gatehouse_http_responses_total"
        for s in families["gatehouse_http_responses"].samples
    )


async def test_no_exemplar_without_a_request_id_or_a_valid_trace() -> None:
    app = FastAPI()
    path = f"/solo-{uuid.uuid4().hex[:8]}"  # a route of its own: its buckets start empty

    @app.get(path)
    async def solo() -> dict[str, bool]:
        return {"ok": True}

    metrics.install(app)  # no access-log middleware: no request id
    bad_trace = f"00-{'0' * 32}-00f067aa0ba902b7-01"
    async with client(app) as c:
        assert (await c.get(path, headers={"traceparent": bad_trace})).status_code == 200
        om = await c.get("/metrics", headers={"accept": OPENMETRICS})
    (hist,) = (
        f
        for f in openmetrics_families(om.text)
        if f.name == "gatehouse_http_request_duration_seconds"
    )
    mine = [s for s in hist.samples if s.labels.get("route") == path]
    assert any(s.name.endswith("_count") and s.value == 1 for s in mine)
    assert [s.exemplar for s in mine] == [None] * len(mine)


def test_process_and_cuda_families_are_exported() -> None:
    names = exposition_names()
    assert {"process_resident_memory_bytes", "process_cpu_seconds"} <= names
    # Declared even without a GPU so dashboards and alerts always name real metrics.
    assert {
        "gatehouse_cuda_memory_allocated_bytes",
        "gatehouse_cuda_memory_reserved_bytes",
    } <= names


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_memory_is_read_at_scrape_time() -> None:
    before = value("gatehouse_cuda_memory_allocated_bytes", device="cuda:0")
    block = torch.empty(64 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    after = value("gatehouse_cuda_memory_allocated_bytes", device="cuda:0")
    assert after - before >= block.numel()
    assert value("gatehouse_cuda_memory_reserved_bytes", device="cuda:0") >= after
    del block
