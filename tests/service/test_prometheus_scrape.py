"""`/metrics` of a real `python -m service`: exact counts, promtool, the dashboard's and alerts'
metric names, OpenMetrics with exemplars, training counters, and a real Prometheus server
scraping it on loopback (OpenMetrics negotiated, exemplars stored, recording rules evaluated)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TINY_TEXT, ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "gatehouse.json"
ALERTS = ROOT / "docker" / "alerts.yml"
# Series Prometheus itself adds to every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# What Prometheus 2.x sends: OpenMetrics first, the 0.0.4 text format as the fallback.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TRACE = "0af7651916cd43dd8448eb211c80319c"
# Dashboard variables, as Grafana would fill them with "All".
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$job": ".*", "$instance": ".*"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "and", "or", "unless", "inf", "nan", "atan2"}  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A copy: the training test saves a model, and the session's tiny store is shared.
    store = tmp_path_factory.mktemp("scrape") / "models"
    shutil.copytree(tiny_store, store)
    s = ServerProcess(store, "--no-bootstrap")
    try:
        s.wait_ready(60)
        yield s
    finally:
        s.stop()


def scrape(server: ServerProcess) -> str:
    r = httpx.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def delta(before: str, after: str, name: str, **labels: str) -> float:
    k = key(name, **labels)
    return samples(after).get(k, 0.0) - samples(before).get(k, 0.0)


def test_counts_move_by_exactly_the_requests_sent(server: ServerProcess) -> None:
    count = "gatehouse_http_request_duration_seconds_count"
    before = scrape(server)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for _ in range(23):
            assert c.get("/healthz").status_code == 200
        for i in range(4):
            assert c.get(f"/no/such/{uuid.uuid4().hex}/{i}").status_code == 404
        for _ in range(3):
            assert c.post("/predict", json={"text": "the clouds"}).status_code == 200
    after = scrape(server)
    assert delta(before, after, count, route="/healthz", method="GET", status="200") == 23
    assert delta(before, after, count, route="unmatched", method="GET", status="404") == 4
    assert delta(before, after, count, route="/predict", method="POST", status="200") == 3
    # The first scrape's own response is counted once it is over, so it shows in the second.
    assert delta(before, after, "gatehouse_http_responses_total", status_class="2xx") == 27
    assert delta(before, after, "gatehouse_http_responses_total", status_class="4xx") == 4
    assert samples(after)[key("gatehouse_http_requests_in_flight")] == 1  # this very scrape


def test_inference_metrics_count_predictions_and_tokens(server: ServerProcess) -> None:
    labels = {"model": "lstm", "arch": "lstm", "version": "1"}
    tokens = 0
    before = scrape(server)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for _ in range(5):
            r = c.post("/predict", json={"text": "the clouds are in the", "model": "lstm"})
            assert r.status_code == 200
            tokens += len(r.json()["tokens"])
        texts = ["i grew up in", "the keys", "the old cabinet is"]
        r = c.post("/predict", json={"texts": texts, "model": "lstm"})
        assert r.status_code == 200
        tokens += sum(len(res["tokens"]) for res in r.json()["results"])
    after = scrape(server)
    assert tokens == 5 * 5 + 4 + 2 + 4
    assert delta(before, after, "gatehouse_inference_predictions_total", **labels) == 5 + 3
    assert delta(before, after, "gatehouse_inference_tokens_total", **labels) == tokens
    for hist in ("duration", "queue", "compute"):
        n = delta(before, after, f"gatehouse_inference_{hist}_seconds_count", **labels)
        assert n == 5 + 3, hist


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return (name, frozenset(labels.items()))


def test_model_registry_series_describe_the_store(server: ServerProcess) -> None:
    models = httpx.get(server.url + "/models", timeout=10).json()["models"]
    assert models
    current = samples(scrape(server))
    for m in models:
        lab = {"model": m["name"], "arch": m["arch"], "version": str(m["version"])}
        assert current[key("gatehouse_model_info", **lab, device=m["device"])] == 1
        assert current[key("gatehouse_model_parameters", **lab)] == m["params"]
    assert current[key("gatehouse_models_loaded")] == len(models)


def test_promtool_finds_nothing_to_complain_about(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        c.post("/predict", json={"text": "the sky"})
        c.post("/predict", json={"text": ""})
        c.get("/models/does-not-exist")
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make system-deps` installs it"
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape(server),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
        proc.stdout + proc.stderr
    )


def test_event_stream_is_an_open_stream_not_a_request_in_flight(server: ServerProcess) -> None:
    count = "gatehouse_http_request_duration_seconds_count"
    events = {"route": "/jobs/{job_id}/events", "method": "GET", "status": "200"}
    body = {
        "arch": "rnn",
        "name": f"sse-{uuid.uuid4().hex[:8]}",
        "corpus": {"text": TINY_TEXT * 20},
        "epochs": 100,  # runs until cancelled below
        "embedding_size": 8,
        "hidden_size": 8,
    }
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/train", json=body)
        assert r.status_code == 202, r.text
        job = r.json()["job_id"]
        try:
            before = scrape(server)
            with c.stream("GET", f"/jobs/{job}/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                # Keep the iterator: dropping it closes the connection and ends the stream.
                lines = stream.iter_lines()
                assert next(lines).startswith(("event:", ":", "data:"))
                during = scrape(server)
                now = samples(during)
                assert now[key("gatehouse_http_streams_open")] == 1
                assert now[key("gatehouse_http_requests_in_flight")] == 1  # the scrape itself
                # Latency of a stream is time to its headers: observed while it is still open.
                assert delta(before, during, count, **events) == 1
        finally:
            c.delete(f"/jobs/{job}")
    deadline = time.monotonic() + 20
    while samples(scrape(server))[key("gatehouse_http_streams_open")] != 0:
        assert time.monotonic() < deadline, "the closed stream is still counted"
        time.sleep(0.2)
    assert delta(before, scrape(server), count, **events) == 1


# --- metric names in PromQL -------------------------------------------------------------------


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, numbers, function calls and keywords are taken out."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"(?<![\w:])\d+(\.\d*)?([eE][+-]?\d+)?[smhdwy]?", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][\w:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][\w:]*", line).group())
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def dashboard_variable_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]


def fill(expr: str) -> str:
    for name, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def alert_exprs() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for g in groups for rule in g["rules"]]


def test_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(a_seconds_bucket{model=~"$model", '
        'x="y(z)"}[$__rate_interval]))) / clamp_min(sum without (le) (b_total offset 5m), 1e-9)'
        " > 0.5 and on(job) up == bool 1"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "up"}
    text = '# TYPE h histogram\nh_bucket{le="1"} 0\n# TYPE c_total counter\nc_total 1\n'
    assert exported_names(text) == {"h", "h_bucket", "h_sum", "h_count", "c_total"}


def recorded_names() -> set[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["record"] for g in groups for rule in g["rules"] if "record" in rule}


def test_every_dashboard_and_alert_query_names_exported_metrics(server: ServerProcess) -> None:
    # Recording rules may read the series other rules record; nothing else is allowed.
    exported = exported_names(scrape(server)) | SYNTHETIC | recorded_names()
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} in {expr!r} are not exported"
    for query in dashboard_variable_queries():
        (metric,) = re.findall(r"label_values\(\s*([\w:]+)\s*[{,]", query)
        assert metric in exported


# --- a real Prometheus ----------------------------------------------------------------------


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: `make system-deps` installs it"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "gatehouse", "static_configs": [{"targets": [server.url[7:]]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--enable-feature=exemplar-storage",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=5)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_for(prom: str, expr: str, ok, timeout: float = 20.0) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    result: list[dict] = []
    while time.monotonic() < deadline:
        try:
            result = query(prom, expr)
            if ok(result):
                return result
        except (httpx.HTTPError, ValueError):
            pass  # still starting: refused, or a plain-text 503 until its storage is ready
        time.sleep(0.25)
    raise TimeoutError(f"{expr}: last answer {result}")


def test_real_prometheus_scrapes_and_answers_a_rate_query(
    server: ServerProcess, prometheus: str
) -> None:
    def value(result: list[dict]) -> float:
        return float(result[0]["value"][1]) if result else -1.0

    wait_for(prometheus, 'up{job="gatehouse"}', lambda r: value(r) == 1.0)
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for _ in range(30):
            assert c.get("/healthz").status_code == 200
    selector = 'gatehouse_http_request_duration_seconds_count{route="/healthz",status="200"}'
    count = "gatehouse_http_request_duration_seconds_count"
    sent = samples(scrape(server))[key(count, route="/healthz", method="GET", status="200")]
    # Prometheus holds exactly what the server counted ...
    wait_for(prometheus, f"sum({selector})", lambda r: value(r) == sent)
    # ... and turns it into a request rate.
    rate = wait_for(prometheus, f"sum(rate({selector}[10s]))", lambda r: value(r) > 0)
    assert value(rate) > 0
    # Every dashboard and alert expression is valid PromQL to a real Prometheus.
    for expr in dashboard_exprs() + alert_exprs() + dashboard_variable_selectors():
        query(prometheus, fill(expr))


def dashboard_variable_selectors() -> list[str]:
    """The series selector inside each variable's label_values(...), as a query."""
    out = []
    for q in dashboard_variable_queries():
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
        assert m, q
        out.append(m.group(1))
    return out


def test_openmetrics_with_exemplars_from_the_real_server(server: ServerProcess) -> None:
    rid = uuid.uuid4().hex
    headers = {"x-request-id": rid, "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}
    assert httpx.get(server.url + "/models", headers=headers, timeout=10).status_code == 200
    r = httpx.get(server.url + "/metrics", headers={"accept": PROMETHEUS_ACCEPT}, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert r.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(r.text)}  # raises on invalid input
    hist = families["gatehouse_http_request_duration_seconds"]
    exemplars = [
        s.exemplar.labels
        for s in hist.samples
        if s.exemplar is not None and s.labels["route"] == "/models"
    ]
    assert {"request_id": rid, "trace_id": TRACE} in exemplars
    # The same series as the 0.0.4 format, under the same sample names.
    plain = samples(scrape(server))
    om_names = {s.name for f in families.values() for s in f.samples}
    assert {name for name, _ in plain} <= om_names


def test_training_counters_count_every_token_and_step(server: ServerProcess) -> None:
    body = {
        "arch": "gru",
        "name": f"count-{uuid.uuid4().hex[:8]}",
        "corpus": {"text": TINY_TEXT * 8},
        "epochs": 3,
        "batch_size": 4,
        "bptt": 7,
        "embedding_size": 8,
        "hidden_size": 8,
    }
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post("/train", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while (job := c.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    assert job["status"] == "succeeded", job
    # Every target token of every step: each epoch walks the batchified rows once.
    n = job["corpus"]["train_tokens"]
    rows = max(1, min(job["config"]["batch_size"], n // 2))
    expected = job["metrics"]["epochs"] * rows * (n // rows - 1)
    now = samples(scrape(server))
    lab = {"job_id": job_id, "model": body["name"], "arch": "gru"}
    assert now[key("gatehouse_training_job_tokens_total", **lab)] == expected
    assert now[key("gatehouse_training_job_steps_total", **lab)] == job["metrics"]["steps"]
    # A finished job keeps no gauges.
    assert key("gatehouse_training_job_progress_ratio", **lab) not in now


def test_real_prometheus_negotiates_openmetrics_stores_exemplars_and_records(
    server: ServerProcess, prometheus: str
) -> None:
    def value(result: list[dict]) -> float:
        return float(result[0]["value"][1]) if result else -1.0

    wait_for(prometheus, 'up{job="gatehouse"}', lambda r: value(r) == 1.0)
    rid = uuid.uuid4().hex
    headers = {"x-request-id": rid, "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"}
    start = time.time()
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for _ in range(5):
            assert (
                c.post("/predict", json={"text": "the clouds", "model": "lstm"}).status_code == 200
            )
        assert c.get("/healthz", headers=headers).status_code == 200

    # Exemplars reach Prometheus only in the OpenMetrics format: storing one shows it was
    # negotiated.
    def has_ours(result: list[dict]) -> bool:
        return any(e["labels"] == {"request_id": rid, "trace_id": TRACE}
                   for series in result for e in series["exemplars"])  # fmt: skip

    deadline = time.monotonic() + 20
    found: list[dict] = []
    while time.monotonic() < deadline and not has_ours(found):
        time.sleep(0.25)
        r = httpx.get(
            prometheus + "/api/v1/query_exemplars",
            params={
                "query": 'gatehouse_http_request_duration_seconds_bucket{route="/healthz"}',
                "start": start - 5,
                "end": time.time() + 5,
            },
            timeout=5,
        )
        if r.status_code == 200:
            found = r.json()["data"]
    assert has_ours(found), found

    # The recording rules, evaluated by Prometheus over the scraped series.
    p50 = (
        'job_route:gatehouse_http_request_duration_seconds:p50_5m{job="gatehouse",route="/predict"}'
    )
    result = wait_for(prometheus, p50, lambda r: 0 < value(r) < 30)
    assert 0 < value(result) < 30
    ratio = 'job:gatehouse_http_responses:error_ratio_5m{job="gatehouse"}'
    assert value(wait_for(prometheus, ratio, lambda r: value(r) >= 0)) == 0
    fill = 'job_instance_model:gatehouse_batch_fill:ratio_5m{model="lstm"}'
    assert 0 < value(wait_for(prometheus, fill, lambda r: value(r) > 0)) <= 1
