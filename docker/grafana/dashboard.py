"""Builds the Gatehouse Grafana dashboard in two copies from one definition:

- docker/grafana/dashboards/gatehouse.json, provisioned by docker-compose.yml's Grafana;
- docs/grafana/gatehouse.json, for "Dashboards > New > Import" into an existing Grafana: its
  `__inputs` make the import ask which Prometheus datasource to use.

Every query goes through the `${datasource}` variable (no datasource uid is written anywhere)
and is filtered by the `job` and `instance` variables, so the dashboard finds its data in a
Grafana whose Prometheus scrapes several replicas under any job name.

Run `python docker/grafana/dashboard.py` after editing; tests/service/test_dashboard.py fails
while a committed copy differs from what this builds.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROVISIONED = ROOT / "docker" / "grafana" / "dashboards" / "gatehouse.json"
IMPORTABLE = ROOT / "docs" / "grafana" / "gatehouse.json"
INPUT = "DS_PROMETHEUS"  # the import dialog's datasource question
DS = {"type": "prometheus", "uid": "${datasource}"}

SCOPE = 'job=~"$job", instance=~"$instance"'
MODEL = SCOPE + ', model=~"$model"'
RI = "[$__rate_interval]"
NOT_2XX = ', status!~"2.."'


def _rate(metric: str, sel: str = SCOPE) -> str:
    return f"rate({metric}{{{sel}}}{RI})"


def _quantile(q: float, metric: str, by: str, sel: str = SCOPE) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) ({_rate(metric + '_bucket', sel)}))"


def _mean(metric: str, by: str, sel: str = SCOPE) -> str:
    return (
        f"sum by ({by}) ({_rate(metric + '_sum', sel)})"
        f" / sum by ({by}) ({_rate(metric + '_count', sel)})"
    )


class _Layout:
    """Places panels left to right, wrapping at Grafana's 24 columns; ids in order."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = 0
        self.height = 0

    def row(self, title: str) -> None:
        self._wrap()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "id": len(self.panels) + 1,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _wrap(self) -> None:
        if self.x:
            self.x, self.y, self.height = 0, self.y + self.height, 0

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        unit: str = "short",
        description: str = "",
        width: int = 8,
        kind: str = "timeseries",
        exemplars: bool = False,
    ) -> None:
        if self.x + width > 24:
            self._wrap()
        panel: dict[str, Any] = {
            "type": kind,
            "title": title,
            "id": len(self.panels) + 1,
            "datasource": DS,
            "description": description,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": leg}
                for i, (expr, leg) in enumerate(targets)
            ],
        }
        if exemplars:  # drawn as points on the graph; hovering one shows its request_id
            for target in panel["targets"]:
                target["exemplar"] = True
        if kind == "table":
            # One row per series: the two instant queries joined on their labels.
            for target in panel["targets"]:
                target.update(instant=True, format="table")
            panel["options"] = {"showHeader": True}
            hidden = {"Time": True, "__name__": True, "Value #A": True}
            panel["transformations"] = [
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {"excludeByName": hidden, "renameByName": {"Value #B": "params"}},
                },
            ]
        if kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "showPoints": "never",
            }
            panel["options"] = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        self.panels.append(panel)
        self.x += width
        self.height = max(self.height, 8)


def _http(lay: _Layout) -> None:
    dur = "gatehouse_http_request_duration_seconds"
    no_metrics = SCOPE + ', route!="/metrics"'
    lay.row("HTTP")
    lay.panel(
        "Request rate by route",
        [(f"sum by (route) ({_rate(dur + '_count')})", "{{route}}")],
        "reqps",
        "Requests per second, by route template (unmatched paths share one label).",
    )
    lay.panel(
        "Latency by route (p50 / p95 / p99)",
        [
            (_quantile(q, dur, "route", no_metrics), f"{{{{route}}}} p{round(q * 100)}")
            for q in (0.5, 0.95, 0.99)
        ],
        "s",
        "From request start to the last response byte; event streams to their headers. "
        "Exemplars (request_id, trace_id) link a point to its access-log line.",
        exemplars=True,
    )
    responses = "gatehouse_http_responses_total"
    total = f"clamp_min(sum({_rate(responses)}), 1e-9)"
    errors = {c: _rate(responses, f'{SCOPE}, status_class="{c}"') for c in ("5xx", "4xx")}
    lay.panel(
        "Error rate",
        [(f"sum({errors[c]}) / {total}", c) for c in ("5xx", "4xx")],
        "percentunit",
        "Share of responses that are client (4xx) or server (5xx) errors.",
    )
    lay.panel(
        "Responses by status",
        [
            (
                f"sum by (route, status) ({_rate(dur + '_count', SCOPE + NOT_2XX)})",
                "{{route}} {{status}}",
            )
        ],
        "reqps",
        "Non-2xx responses per second, by route and status code.",
    )
    lay.panel(
        "In flight",
        [
            (f"sum(gatehouse_http_requests_in_flight{{{SCOPE}}})", "requests in flight"),
            (f"sum(gatehouse_http_streams_open{{{SCOPE}}})", "open event streams"),
        ],
    )
    lay.panel(
        "Process",
        [
            (f"process_resident_memory_bytes{{{SCOPE}}}", "{{instance}} resident memory"),
            (_rate("process_cpu_seconds_total"), "{{instance}} CPU cores"),
        ],
        "bytes",
    )


def _replicas(lay: _Layout) -> None:
    dur = "gatehouse_http_request_duration_seconds"
    no_metrics = SCOPE + ', route!="/metrics"'
    lay.row("Replicas")
    lay.panel(
        "Request rate by replica",
        [(f"sum by (instance) ({_rate(dur + '_count', no_metrics)})", "{{instance}}")],
        "reqps",
        "Requests per second each replica answered (scrapes of /metrics left out).",
    )
    lay.panel(
        "p99 latency by replica",
        [(_quantile(0.99, dur, "instance", no_metrics), "{{instance}} p99")],
        "s",
        "A replica far above the others is overloaded or unwell.",
        exemplars=True,
    )
    lay.panel(
        "Predictions per second by replica",
        [
            (
                f"sum by (instance) ({_rate('gatehouse_inference_predictions_total', MODEL)})",
                "{{instance}}",
            )
        ],
    )


def _models(lay: _Layout) -> None:
    lay.row("Models")
    inf = "gatehouse_inference_duration_seconds"
    lay.panel(
        "Inference rate by model",
        [(f"sum by (model) ({_rate(inf + '_count', MODEL)})", "{{model}}")],
        "reqps",
        "Requests served per second by each model (all versions).",
    )
    lay.panel(
        "Inference latency by model (p50 / p95 / p99)",
        [
            (_quantile(q, inf, "model", MODEL), f"{{{{model}}}} p{round(q * 100)}")
            for q in (0.5, 0.95, 0.99)
        ],
        "s",
        "Queue wait plus compute, per request.",
    )
    queue, compute = "gatehouse_inference_queue_seconds", "gatehouse_inference_compute_seconds"
    lay.panel(
        "Queue wait vs compute (p95)",
        [
            (_quantile(0.95, queue, "model", MODEL), "{{model}} queue p95"),
            (_quantile(0.95, compute, "model", MODEL), "{{model}} compute p95"),
            (_mean(queue, "model", MODEL), "{{model}} queue mean"),
            (_mean(compute, "model", MODEL), "{{model}} compute mean"),
        ],
        "s",
        "Where the time goes: waiting for a batch slot, or in the forward pass.",
    )
    lay.panel(
        "Tokens and predictions per second",
        [
            (
                f"sum by (model) ({_rate('gatehouse_inference_tokens_total', MODEL)})",
                "{{model}} tokens/s",
            ),
            (
                f"sum by (model) ({_rate('gatehouse_inference_predictions_total', MODEL)})",
                "{{model}} predictions/s",
            ),
        ],
    )
    batch = "gatehouse_batch_size"
    lay.panel(
        "Batch size and fill",
        [
            (_mean(batch, "model", MODEL), "{{model}} mean"),
            (_quantile(0.95, batch, "model", MODEL), "{{model}} p95"),
            (f"max(gatehouse_batch_size_limit{{{SCOPE}}})", "limit (--max-batch-size)"),
        ],
        "short",
        "Requests per forward pass chosen by the dynamic batcher, against its limit.",
    )
    lay.panel(
        "Active sessions",
        [(f"sum by (model) (gatehouse_sessions_active{{{MODEL}}})", "{{model}}")],
        "short",
        "Server-held recurrent sessions alive now.",
    )
    lay.panel(
        "Loaded models",
        [
            (f"gatehouse_model_info{{{SCOPE}}}", ""),
            (f"gatehouse_model_parameters{{{SCOPE}}}", ""),
        ],
        width=12,
        kind="table",
    )
    lay.panel(
        "Model loads and failures",
        [
            (
                f"histogram_quantile(0.95, sum by (le, model) "
                f"(rate(gatehouse_model_load_duration_seconds_bucket{{{SCOPE}}}[1h])))",
                "{{model}} load p95",
            ),
            (
                "sum by (model, reason) "
                f"(increase(gatehouse_model_load_failures_total{{{SCOPE}}}[1h]))",
                "{{model}} failed: {{reason}}",
            ),
        ],
        "short",
        "Load time (seconds, p95 over the last hour) and failed loads in the last hour.",
        width=12,
    )


def _training(lay: _Layout) -> None:
    lay.row("Training")
    job = "{{job_id}} ({{model}})"
    lay.panel(
        "Jobs by state", [(f"sum by (state) (gatehouse_training_jobs{{{SCOPE}}})", "{{state}}")]
    )
    lay.panel(
        "Job progress",
        [(f"gatehouse_training_job_progress_ratio{{{SCOPE}}}", "{{job_id}} ({{model}}, {{arch}})")],
        "percentunit",
    )
    lay.panel(
        "Training throughput",
        [
            (
                f"sum by (job_id, model) ({_rate('gatehouse_training_job_tokens_total')})",
                job + " tokens/s",
            ),
            (
                f"sum by (job_id, model) ({_rate('gatehouse_training_job_steps_total')})",
                job + " steps/s",
            ),
        ],
        "short",
        "Trained tokens and optimizer steps per second, from each job's counters.",
    )
    lay.panel(
        "Training tokens per second by replica",
        [(f"sum by (instance) ({_rate('gatehouse_training_job_tokens_total')})", "{{instance}}")],
    )
    lay.panel(
        "Training loss",
        [(f"gatehouse_training_job_loss{{{SCOPE}}}", job)],
        "short",
        "Mean cross-entropy per token (nats) of each running job.",
    )
    lay.panel(
        "Validation perplexity", [(f"gatehouse_training_job_validation_perplexity{{{SCOPE}}}", job)]
    )
    lay.panel(
        "Finished jobs",
        [
            (
                "sum by (status) "
                f"(increase(gatehouse_training_job_duration_seconds_count{{{SCOPE}}}[1h]))",
                "{{status}} in the last hour",
            ),
            (
                f"histogram_quantile(0.5, sum by (le) "
                f"(rate(gatehouse_training_job_duration_seconds_bucket{{{SCOPE}}}[6h])))",
                "median duration (s)",
            ),
        ],
    )


def _runtime(lay: _Layout) -> None:
    lay.row("GPU and runtime")
    lay.panel(
        "CUDA memory",
        [
            (
                f"sum by (instance, device) (gatehouse_cuda_memory_allocated_bytes{{{SCOPE}}})",
                "{{instance}} {{device}} allocated",
            ),
            (
                f"sum by (instance, device) (gatehouse_cuda_memory_reserved_bytes{{{SCOPE}}})",
                "{{instance}} {{device}} reserved",
            ),
        ],
        "bytes",
        "Empty when the server runs on CPU.",
        width=12,
    )
    gc = "gatehouse_gc_pause_seconds"
    lay.panel(
        "Garbage-collector pauses",
        [
            (
                f"sum by (generation) ({_rate(gc + '_sum')})",
                "time paused, generation {{generation}}",
            ),
            (_quantile(0.99, gc, "generation"), "p99 pause, generation {{generation}}"),
        ],
        "percentunit",
        "Share of time stopped by garbage collection and the p99 pause (seconds), by "
        "generation. Full (generation 2) pauses stall the event loop; the server freezes its "
        "start-up heap so they stay at a few ms.",
        width=12,
    )


def _query_variable(name: str, query: str, include_all: bool) -> dict[str, Any]:
    var: dict[str, Any] = {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,  # on time-range change: replicas come and go
        "multi": include_all,
        "includeAll": include_all,
        "sort": 1,
        "current": {},
    }
    if include_all:
        var["allValue"] = ".*"
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return var


def _variables(importable: bool) -> list[dict[str, Any]]:
    datasource: dict[str, Any] = {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "refresh": 1,
        "hide": 0,
        # Provisioned: Grafana's default Prometheus. Imported: the one picked at import.
        "current": {"selected": True, "text": f"${{{INPUT}}}", "value": f"${{{INPUT}}}"}
        if importable
        else {},
    }
    return [
        datasource,
        _query_variable("job", "label_values(gatehouse_build_info, job)", include_all=True),
        _query_variable(
            "instance", 'label_values(gatehouse_build_info{job=~"$job"}, instance)', True
        ),
        _query_variable(
            "model", f"label_values(gatehouse_model_info{{{SCOPE}}}, model)", include_all=True
        ),
    ]


def build(importable: bool = False) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model; `importable` adds what the import dialog reads."""
    lay = _Layout()
    for section in (_http, _replicas, _models, _training, _runtime):
        section(lay)
    dash: dict[str, Any] = {
        "uid": "gatehouse-overview",
        "title": "Gatehouse",
        "tags": ["gatehouse"],
        "timezone": "browser",
        "editable": importable,  # a provisioned copy is changed here, not in Grafana
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables(importable)},
        "annotations": {"list": []},
        "panels": copy.deepcopy(lay.panels),
    }
    if importable:
        dash = {
            "__inputs": [
                {
                    "name": INPUT,
                    "label": "Prometheus",
                    "description": "The Prometheus that scrapes Gatehouse",
                    "type": "datasource",
                    "pluginId": "prometheus",
                    "pluginName": "Prometheus",
                }
            ],
            "__requires": [
                {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                {
                    "type": "datasource",
                    "id": "prometheus",
                    "name": "Prometheus",
                    "version": "1.0.0",
                },
                {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
                {"type": "panel", "id": "table", "name": "Table", "version": ""},
            ],
            "id": None,
            **dash,
        }
    return dash


def render(importable: bool = False) -> str:
    return json.dumps(build(importable), indent=2) + "\n"


def main() -> int:
    for path, importable in ((PROVISIONED, False), (IMPORTABLE, True)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(importable))
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
