"""The Grafana dashboard, built by docker/grafana/dashboard.py: both committed copies are what it
builds, every panel and variable queries through the `${datasource}` variable and the `job` and
`instance` variables, and the importable copy carries what Grafana's import dialog reads.

That every metric a panel names is exported, and that a real Prometheus accepts every query, is
checked against a live server in test_prometheus_scrape.py."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard", ROOT / "docker/grafana/dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = builder()
COPIES = {"provisioned": BUILD.PROVISIONED, "importable": BUILD.IMPORTABLE}


def load(which: str) -> dict:
    return json.loads(COPIES[which].read_text())


@pytest.mark.parametrize("which", COPIES)
def test_committed_copy_is_what_the_builder_makes(which: str) -> None:
    expected = BUILD.render(importable=which == "importable")
    assert COPIES[which].read_text() == expected, "run: python docker/grafana/dashboard.py"


@pytest.mark.parametrize("which", COPIES)
def test_no_datasource_uid_is_written_down(which: str) -> None:
    dash = load(which)
    text = COPIES[which].read_text()
    uids = set(re.findall(r'"uid":\s*"([^"]*)"', text)) - {dash["uid"]}
    assert uids == {"${datasource}"}
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def variables(dash: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dash["templating"]["list"]}


@pytest.mark.parametrize("which", COPIES)
def test_datasource_job_and_instance_variables(which: str) -> None:
    dash = load(which)
    var = variables(dash)
    assert list(var) == ["datasource", "job", "instance", "model"]
    assert var["datasource"]["type"] == "datasource" and var["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "model"):
        assert var[name]["type"] == "query" and var[name]["includeAll"], name
        assert var[name]["datasource"]["uid"] == "${datasource}"
        assert var[name]["definition"] == var[name]["query"]["query"]
    assert var["job"]["definition"] == "label_values(gatehouse_build_info, job)"
    # An instance list narrowed to the chosen jobs, a model list to the chosen replicas.
    assert '{job=~"$job"}' in var["instance"]["definition"]
    assert 'instance=~"$instance"' in var["model"]["definition"]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, label matchers) of every vector selector in an expression."""
    return re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", expr)


@pytest.mark.parametrize("which", COPIES)
def test_every_query_is_scoped_to_the_chosen_jobs_and_replicas(which: str) -> None:
    dash = load(which)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 30
    for expr in exprs:
        found = selectors(expr)
        assert found, f"a metric without label matchers in {expr!r}"
        for metric, matchers in found:
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (
                metric,
                expr,
            )
        # Every metric in the expression is one of the scoped selectors.
        bare = re.sub(r"[A-Za-z_:][\w:]*\{[^}]*\}", "", expr)
        assert not re.search(r"\b(gatehouse_|process_)\w*", bare), expr


def test_panels_are_laid_out_and_cover_the_service() -> None:
    dash = load("provisioned")
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    spots = set()
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & spots, f"{panel['title']} overlaps another panel"
        spots |= cells
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("request rate", "latency", "error", "queue", "batch", "sessions", "loss",
                  "perplexity", "cuda", "by replica", "training throughput"):  # fmt: skip
        assert topic in titles, f"no panel about {topic}"


def test_per_replica_breakdowns_of_throughput_and_latency() -> None:
    dash = load("provisioned")
    by_instance = [
        t["expr"]
        for p in dash["panels"]
        for t in p.get("targets", [])
        if re.search(r"by \((le, )?instance\)", t["expr"])
    ]
    joined = " ".join(by_instance)
    assert "gatehouse_http_request_duration_seconds_count" in joined  # request rate
    assert "histogram_quantile(0.99" in joined  # latency
    assert "gatehouse_training_job_tokens_total" in joined  # training throughput


def test_http_latency_panels_ask_for_exemplars() -> None:
    dash = load("provisioned")
    asking = {p["title"] for p in dash["panels"] for t in p.get("targets", []) if t.get("exemplar")}
    assert asking == {"Latency by route (p50 / p95 / p99)", "p99 latency by replica"}
    for panel in dash["panels"]:
        if panel["title"] in asking:
            assert all(
                "gatehouse_http_request_duration_seconds_bucket" in t["expr"]
                for t in panel["targets"]
            )


def test_training_throughput_is_a_rate_of_the_token_counter() -> None:
    dash = load("provisioned")
    panel = next(p for p in dash["panels"] if p["title"] == "Training throughput")
    exprs = [t["expr"] for t in panel["targets"]]
    assert any("rate(gatehouse_training_job_tokens_total" in e for e in exprs)
    assert any("rate(gatehouse_training_job_steps_total" in e for e in exprs)
    assert "tokens_per_second" not in json.dumps(dash)


def test_importable_copy_asks_for_a_datasource() -> None:
    dash = load("importable")
    (wanted,) = dash["__inputs"]
    assert wanted["type"] == "datasource" and wanted["pluginId"] == "prometheus"
    ref = "${" + wanted["name"] + "}"
    assert variables(dash)["datasource"]["current"]["value"] == ref
    assert {"type": "datasource", "id": "prometheus"}.items() <= dash["__requires"][1].items()
    assert dash["id"] is None
    # The provisioned copy is the same dashboard without the import fields.
    provisioned = load("provisioned")
    assert dash["panels"] == provisioned["panels"]
    assert "__inputs" not in provisioned and variables(provisioned)["datasource"]["current"] == {}
