"""The job manager in-process: start-up recovery, one queue owner per store, the time limit."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from models import store
from service.errors import ApiError
from service.jobs import intake, spool
from service.jobs.bounds import TrainBounds
from service.jobs.db import JobDB
from service.jobs.manager import JobManager
from service.registry import ModelRegistry
from service.schemas.jobs import CorpusSpec
from service.settings import Settings


def make_manager(model_dir: Path, **bounds: float) -> JobManager:
    settings = Settings(model_dir=model_dir, no_bootstrap=True, device="cpu")
    registry = ModelRegistry(model_dir, "cpu", "lstm")
    return JobManager(settings, registry, TrainBounds(**bounds))


async def wait_final(manager: JobManager, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await manager.get(job_id)
        if found is not None and found["status"] in ("succeeded", "failed", "cancelled"):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {await manager.get(job_id)}")


async def test_one_server_owns_the_queue_of_a_store(tmp_path: Path) -> None:
    first, second = make_manager(tmp_path), make_manager(tmp_path)
    await first.start()
    await second.start()
    try:
        await first.check_capacity()
        with pytest.raises(ApiError) as refused:
            await second.check_capacity()
        assert refused.value.status == 503 and "another server" in refused.value.message
        assert await second.list(None, 10) == []  # it still answers reads
    finally:
        await second.stop()
        await first.stop()
    third = make_manager(tmp_path)  # the lock goes with the owner
    await third.start()
    try:
        await third.check_capacity()
    finally:
        await third.stop()


async def test_start_up_recovers_and_cleans(tmp_path: Path) -> None:
    db = JobDB(Settings(model_dir=tmp_path).jobs_db)
    db.insert("a" * 16, "lost", "gru", {}, {"kind": "text"})
    db.mark_running("a" * 16)  # the server died while it ran; its files are gone too
    db.close()
    root = spool.jobs_root(tmp_path)
    (root / ("b" * 16)).mkdir(parents=True)  # a directory no record owns
    stale = root / f"{spool.STAGING_PREFIX}{'c' * 16}"
    stale.mkdir()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # an upload a crash cut off

    manager = make_manager(tmp_path)
    await manager.start()
    try:
        found = await wait_final(manager, "a" * 16)
        assert found["status"] == "failed" and "files are missing" in found["error"]
        assert found["interruptions"] == 1 and found["attempts"] == 2
        assert sorted(p.name for p in root.iterdir() if p.is_dir()) == []
    finally:
        await manager.stop()


async def test_a_job_over_the_time_limit_fails(tmp_path: Path) -> None:
    manager = make_manager(tmp_path, max_job_seconds=6.0)
    await manager.start()
    try:
        spec = CorpusSpec(builtin="longrange")
        job = await manager.submit(
            "slow",
            "lstm",
            {"name": "slow"},
            {"hidden_size": 32, "embedding_size": 32, "epochs": 20, "batch_size": 4},
            lambda staging: intake.stage_json_corpus(staging, spec, None),
        )
        found = await wait_final(manager, job["job_id"], timeout=60)
        assert found["status"] == "failed" and "time limit of 6s" in found["error"], found
        assert store.list_versions(tmp_path, "slow") == []
    finally:
        await manager.stop()
