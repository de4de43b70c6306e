"""The FastAPI application: wiring only. The work lives in the data plane modules."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from models.device import resolve_device

from . import direct, edge, errors, metrics
from .bootstrap import bootstrap_defaults
from .error_shapes import ErrorShapes
from .errors import JSONResponse
from .inference import InferenceEngine
from .jobs.manager import JobManager
from .limits import BodyLimitMiddleware
from .metrics.gc_pauses import freeze_heap
from .oip import errors as oip_errors
from .openai import errors as openai_errors
from .registry import ModelRegistry
from .routes import gates, health, jobs, models, oip, openai, predict, score, sessions
from .settings import Settings
from .ui import install as install_ui

log = logging.getLogger("gatehouse")

DESCRIPTION = """Serve, inspect and train recurrent next-word language models (tanh RNN, LSTM,
GRU). `/predict` gives the next-word distribution, `/gates` shows what every gate did on each
token, `/train` trains a new model from a posted corpus, `/metrics` is for Prometheus."""


# Every FastAPI signal off: otherwise each request looks up the global OpenTelemetry providers.
_NO_TELEMETRY = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}


def _torch_threads(settings: Settings) -> int:
    return settings.torch_threads or max(1, os.cpu_count() or 1)


async def _in_daemon_thread(fn, *args) -> None:  # type: ignore[no-untyped-def]
    # A daemon thread, not the default executor: shutdown must not wait for a long training.
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            done.set_result(None) if error is None else done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name=getattr(fn, "__name__", "worker"), daemon=True).start()
    await done


async def _watch_store(registry: ModelRegistry, interval: float) -> None:
    """Hot pick-up: new versions written by jobs or `python -m models.train` get served."""
    while True:
        await asyncio.sleep(interval)
        try:
            await _in_daemon_thread(registry.refresh)
        except Exception:  # a store hiccup must not end the watcher
            log.exception("model store refresh failed")


async def _bootstrap(registry: ModelRegistry) -> None:
    try:
        await _in_daemon_thread(bootstrap_defaults, registry.model_dir)
        await _in_daemon_thread(registry.refresh)
        freeze_heap()  # the freshly trained defaults are long-lived too
    except Exception:
        log.exception("training the default models failed; serving whatever the store has")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    torch.set_num_threads(_torch_threads(settings))
    registry = ModelRegistry(
        settings.model_dir, str(resolve_device(settings.device)), settings.default_model
    )
    engine = InferenceEngine(settings, registry)
    job_manager = JobManager(settings, registry)
    app.state.registry, app.state.engine, app.state.jobs = registry, engine, job_manager
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    await _in_daemon_thread(registry.refresh)
    await job_manager.start()
    engine.sessions.start()
    # Full collections otherwise walk the whole start-up heap: ~150 ms stalls of the event
    # loop every ~1.4 s under load (see metrics/gc_pauses.py).
    log.info("froze %d start-up objects out of the garbage collector's way", freeze_heap())
    tasks = [asyncio.create_task(_watch_store(registry, settings.reload_interval_s))]
    if not registry.has_models_on_disk() and not settings.no_bootstrap:
        tasks.append(asyncio.create_task(_bootstrap(registry)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await job_manager.stop()  # running jobs checkpoint; they resume at the next start
        await engine.sessions.close()
        engine.close()
        # Hand the heap back to the collector: what this app held is garbage now, and an app
        # built later in the same process (tests do) must not keep it alive for good.
        gc.unfreeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Gatehouse",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # FastAPI's own /docs and /redoc load their scripts from a CDN: service.ui serves
        # them from a declared package instead, so they work offline.
        docs_url=None,
        redoc_url=None,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    app.state.settings = settings
    errors.install(app)
    # FastAPI matches a request against each route in turn: the routes that carry load come
    # early (the protocol routers' first route is their inference call), the rest after.
    routers = (health, models, predict, openai, oip, score, gates, sessions, jobs)
    for router in (r.router for r in routers):
        app.include_router(router)
    # The JSON inference calls skip FastAPI's per-request machinery (service.direct).
    lane = ("/predict", "/v1/completions", "/score")
    direct.install(app, (predict.router, openai.router, score.router), lane)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_corpus_bytes + 64 * 1024,
        drain_bytes=settings.drain_body_bytes,
    )
    # Outside the body guard, so its refusals get each protocol's shape too.
    shapes = {"/v1": openai_errors.translate, "/v2": oip_errors.translate}
    app.add_middleware(ErrorShapes, shapes=shapes)
    # Request id, access log, request metrics and HEAD in one layer (service.edge).
    edge.install(app)
    metrics.set_batch_limit(settings.max_batch_size)
    install_ui(app, settings)  # last: its CORS layer must wrap every response, errors too
    return app
