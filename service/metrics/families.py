"""The metric families: one module-level registry, bucket layouts, label vocabularies."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import re
from collections.abc import Iterable

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .gc_pauses import GcPauseCollector

# `_created` series double the exposition and no dashboard here reads them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

# Request latencies seen here run from ~200 us (/healthz) to seconds (long /generate).
HTTP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Queue waits are bounded by the batch delay (default 2 ms), so the low end is finer.
INFERENCE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)

UNMATCHED_ROUTE = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
LOAD_FAILURE_REASONS = ("corrupt", "missing", "incompatible", "out_of_memory", "other")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_END_STATES = ("succeeded", "failed", "cancelled")
MODEL_LABELS = ("model", "arch", "version")
JOB_LABELS = ("job_id", "model", "arch")
SAFE_LABEL = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")

# --- HTTP ---------------------------------------------------------------------------------
HTTP_DURATION = Histogram(
    "gatehouse_http_request_duration_seconds",
    "Time from request start to the last response byte (to the headers for event streams), "
    "by route template, method and status.",
    ("route", "method", "status"),
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
HTTP_IN_FLIGHT = Gauge(
    "gatehouse_http_requests_in_flight",
    "Requests being worked on (open event streams are counted apart).",
    registry=REGISTRY,
)
HTTP_STREAMS_OPEN = Gauge(
    "gatehouse_http_streams_open",
    "Server-sent event streams whose headers went out and that are still open.",
    registry=REGISTRY,
)
HTTP_RESPONSES = Counter(
    "gatehouse_http_responses",
    "Responses by status class.",
    ("status_class",),
    registry=REGISTRY,
)

# --- Inference, per model version -------------------------------------------------------------
INFERENCE_DURATION = Histogram(
    "gatehouse_inference_duration_seconds",
    "Inference time per request: queue wait plus compute.",
    MODEL_LABELS,
    buckets=INFERENCE_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_QUEUE = Histogram(
    "gatehouse_inference_queue_seconds",
    "Time a request waited for a batch slot before its forward pass started.",
    MODEL_LABELS,
    buckets=INFERENCE_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_COMPUTE = Histogram(
    "gatehouse_inference_compute_seconds",
    "Forward-pass time for the batch that carried a request.",
    MODEL_LABELS,
    buckets=INFERENCE_BUCKETS,
    registry=REGISTRY,
)
PREDICTIONS = Counter(
    "gatehouse_inference_predictions",
    "Next-word distributions returned (one per text, generated word or session step).",
    MODEL_LABELS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "gatehouse_inference_tokens",
    "Input tokens run through a model.",
    MODEL_LABELS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "gatehouse_batch_size",
    "Requests grouped into one forward pass by the dynamic batcher.",
    MODEL_LABELS,
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_LIMIT = Gauge(
    "gatehouse_batch_size_limit",
    "Most requests the dynamic batcher puts in one forward pass (--max-batch-size).",
    registry=REGISTRY,
)
SESSIONS_ACTIVE = Gauge(
    "gatehouse_sessions_active",
    "Server-held recurrent sessions alive now.",
    ("model",),
    registry=REGISTRY,
)

# --- Model registry -------------------------------------------------------------------------
MODEL_INFO = Gauge(
    "gatehouse_model_info",
    "1 for the newest loaded version of each model; labels describe it.",
    ("model", "arch", "version", "device"),
    registry=REGISTRY,
)
MODEL_PARAMS = Gauge(
    "gatehouse_model_parameters",
    "Trainable parameters of the newest loaded version of each model.",
    MODEL_LABELS,
    registry=REGISTRY,
)
MODEL_LOAD_DURATION = Histogram(
    "gatehouse_model_load_duration_seconds",
    "Time to read a model version from the store onto its device.",
    ("model",),
    buckets=LOAD_BUCKETS,
    registry=REGISTRY,
)
MODEL_LOAD_FAILURES = Counter(
    "gatehouse_model_load_failures",
    "Model versions that could not be loaded, by reason.",
    ("model", "reason"),
    registry=REGISTRY,
)
MODELS_LOADED = Gauge(
    "gatehouse_models_loaded",
    "Models with at least one version loaded.",
    registry=REGISTRY,
)

# --- Training jobs ----------------------------------------------------------------------------
JOBS = Gauge(
    "gatehouse_training_jobs",
    "Training jobs by state.",
    ("state",),
    registry=REGISTRY,
)
JOB_PROGRESS = Gauge(
    "gatehouse_training_job_progress_ratio",
    "Fraction of a running job's work done (0..1).",
    JOB_LABELS,
    registry=REGISTRY,
)
JOB_LOSS = Gauge(
    "gatehouse_training_job_loss",
    "Latest training loss (mean cross-entropy, nats per token) of a running job.",
    JOB_LABELS,
    registry=REGISTRY,
)
JOB_VAL_PPL = Gauge(
    "gatehouse_training_job_validation_perplexity",
    "Latest validation perplexity of a running job.",
    JOB_LABELS,
    registry=REGISTRY,
)
# Counters, not a throughput gauge: rate() gives tokens/s over any window, and sums across jobs
# and replicas stay right.
JOB_TOKENS = Counter(
    "gatehouse_training_job_tokens",
    "Tokens a job has trained on in this server process (target tokens of its training steps).",
    JOB_LABELS,
    registry=REGISTRY,
)
JOB_STEPS = Counter(
    "gatehouse_training_job_steps",
    "Optimizer steps a job has taken in this server process.",
    JOB_LABELS,
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "gatehouse_training_job_duration_seconds",
    "Wall time of finished jobs, by final status.",
    ("status",),
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)

BUILD_INFO = Gauge(
    "gatehouse_build_info",
    "Always 1; labels carry the versions in this process.",
    ("version", "python", "torch"),
    registry=REGISTRY,
)


class CudaMemoryCollector(Collector):
    """Reads CUDA allocator counters at scrape time; the families exist (empty) without a GPU."""

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        allocated, reserved = self._families()
        # A broken driver must not break the scrape: the families then go out empty.
        with contextlib.suppress(Exception):
            # Only once the server itself has set CUDA up: a scrape never creates a context.
            if torch.cuda.is_initialized():
                for i in range(torch.cuda.device_count()):
                    dev = f"cuda:{i}"
                    allocated.add_metric([dev], float(torch.cuda.memory_allocated(i)))
                    reserved.add_metric([dev], float(torch.cuda.memory_reserved(i)))
        return [allocated, reserved]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "gatehouse_cuda_memory_allocated_bytes",
                "Bytes held by live tensors on each CUDA device.",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "gatehouse_cuda_memory_reserved_bytes",
                "Bytes reserved by the CUDA caching allocator on each device.",
                labels=["device"],
            ),
        )


ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
REGISTRY.register(CudaMemoryCollector())
GC_PAUSES = GcPauseCollector()
REGISTRY.register(GC_PAUSES)


def _init_static_series() -> None:
    for cls in STATUS_CLASSES:
        HTTP_RESPONSES.labels(cls)
    for state in JOB_STATES:
        JOBS.labels(state)
    for status in JOB_END_STATES:
        JOB_DURATION.labels(status)
    try:
        pkg = importlib.metadata.version("gatehouse")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        pkg = "unknown"
    BUILD_INFO.labels(pkg, platform.python_version(), str(torch.__version__)).set(1)


_init_static_series()
