"""Every Prometheus metric Gatehouse exports, the helpers that move them, and `GET /metrics`.

`families` defines the metrics on one module-level `CollectorRegistry` (not the client's global
default, so test suites that build many apps in one process never hit duplicate-registration
errors); `recorders` holds the helpers the serving and training layers call; `http` holds the
request middleware and the exposition route (OpenMetrics or the 0.0.4 text format, by the
scraper's `Accept`); `exemplars` what ties a latency observation to its request and trace.

The server runs one uvicorn worker, so one in-process registry is the truth. Running several
worker processes would need prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
`MultiProcessCollector`, a `multiprocess_mode` on every gauge); it is deliberately not wired up.
Metrics moved in another process (a training worker) never reach `/metrics`: report progress
to the server process and call the helpers there.
"""

from .families import (
    JOB_END_STATES,
    JOB_STATES,
    LOAD_FAILURE_REASONS,
    REGISTRY,
    UNMATCHED_ROUTE,
    CudaMemoryCollector,
)
from .http import (
    CLIENT_CLOSED,
    MetricsMiddleware,
    install,
    metrics_endpoint,
    render,
    route_template,
)
from .recorders import (
    FINISHED_JOBS_KEPT,
    job_finished,
    job_progress,
    model_load_failed,
    model_loaded,
    model_unloaded,
    observe_batch,
    set_batch_limit,
    set_jobs_by_state,
    set_sessions_active,
)

__all__ = [
    "FINISHED_JOBS_KEPT",
    "JOB_END_STATES",
    "JOB_STATES",
    "LOAD_FAILURE_REASONS",
    "REGISTRY",
    "UNMATCHED_ROUTE",
    "CLIENT_CLOSED",
    "CudaMemoryCollector",
    "MetricsMiddleware",
    "install",
    "job_finished",
    "job_progress",
    "metrics_endpoint",
    "model_load_failed",
    "model_loaded",
    "model_unloaded",
    "observe_batch",
    "render",
    "route_template",
    "set_batch_limit",
    "set_jobs_by_state",
    "set_sessions_active",
]
