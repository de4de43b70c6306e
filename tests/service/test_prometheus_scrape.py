"""`/metrics` of a real `python -m service`: exact counts, promtool, the dashboard's and alerts'
metric names, and a real Prometheus server scraping it on loopback."""

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
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TINY_TEXT, ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "gatehouse.json"
ALERTS = ROOT / "docker" / "alerts.yml"
# Series Prometheus itself adds to every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "and", "or", "unless", "inf", "nan", "atan2"}  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_store: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_store, "--no-bootstrap")
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


def test_every_dashboard_and_alert_query_names_exported_metrics(server: ServerProcess) -> None:
    exported = exported_names(scrape(server)) | SYNTHETIC
    exprs = dashboard_exprs() + alert_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} in {expr!r} are not exported"
    for query in dashboard_variable_queries():
        (metric,) = re.findall(r"label_values\(\s*([\w:]+)\s*,", query)
        assert metric in exported


# --- a real Prometheus ----------------------------------------------------------------------


@pytest.fixture
def prometheus(server: ServerProcess, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: `make system-deps` installs it"
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
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
    for expr in dashboard_exprs() + alert_exprs():
        query(prometheus, expr.replace("$__rate_interval", "1m").replace("$model", ".*"))
