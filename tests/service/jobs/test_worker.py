"""The worker process on its own: train and save, cancel, checkpoint-and-resume, orphaning.

Each test runs the real `python -m service.jobs.worker` on a real job directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from models import store
from models.checkpoint import checkpoint_path
from service.jobs import spool
from tests.helpers import REPO, TINY_TEXT

JOB_ID = "00112233aabbccdd"
TINY = {"hidden_size": 16, "embedding_size": 16, "batch_size": 4, "bptt": 8, "max_vocab": 100}


def make_job(
    model_dir: Path, text: str, train: dict[str, Any], name: str = "tiny", **extra: Any
) -> Path:
    staging = spool.Staging(model_dir, JOB_ID, 10_000_000)
    staging.write_text(text)
    spec = {
        "job_id": JOB_ID,
        "name": name,
        "arch": "gru",
        "train": {**TINY, **train},
        "corpus": {"kind": "text", "bytes": len(text), "description": "test text"},
        **extra,
    }
    return staging.commit(spec)


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_stray_workers() -> Iterator[None]:
    yield
    while _STARTED:  # a failed test must not leave a worker training on
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


class Worker:
    def __init__(self, job_dir: Path, model_dir: Path) -> None:
        cmd = [sys.executable, "-m", "service.jobs.worker", "--job-dir", str(job_dir)]
        cmd += ["--model-dir", str(model_dir)]
        with open(job_dir / spool.LOG_FILE, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log
            )
        _STARTED.append(self.proc)
        self.events: list[dict[str, Any]] = []

    def next_event(self) -> dict[str, Any] | None:
        out: IO[bytes] = self.proc.stdout  # type: ignore[assignment]
        line = out.readline()
        if not line:
            return None
        event = json.loads(line)
        self.events.append(event)
        return event

    def until(self, kind: str, info_kind: str | None = None) -> dict[str, Any]:
        while (event := self.next_event()) is not None:
            if event["event"] == kind and (
                info_kind is None or event["info"]["event"] == info_kind
            ):
                return event
        raise AssertionError(f"no {kind!r} event; got {[e['event'] for e in self.events]}")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60.0) -> int:
        while self.next_event() is not None:
            continue
        return self.proc.wait(timeout)

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_trains_saves_once_and_a_rerun_adopts_the_saved_version(model_dir: Path) -> None:
    job_dir = make_job(model_dir, TINY_TEXT * 30, {"epochs": 2})
    w = Worker(job_dir, model_dir)
    assert w.finish() == 0
    kinds = w.kinds()
    assert kinds[:2] == ["started", "corpus"] and kinds[-1] == "succeeded"
    epochs = [e["info"] for e in w.events if e["event"] == "progress"]
    assert [p["epoch"] for p in epochs if p["event"] == "epoch"] == [1, 2]
    done = w.events[-1]
    assert done["version"] == 1 and done["metrics"]["val_ppl"] > 0 and len(done["history"]) == 2
    assert w.events[0]["resumed_step"] is None
    meta = store.read_meta(model_dir, "tiny", 1)
    assert meta["job_id"] == JOB_ID and meta["hidden_size"] == 16

    # The server died between the save and recording it: the job runs again, saves nothing.
    again = Worker(job_dir, model_dir)
    assert again.finish() == 0
    assert again.kinds() == ["succeeded"] and again.events[0]["version"] == 1
    assert store.list_versions(model_dir, "tiny") == [1]


def test_cancel_stops_without_a_version(model_dir: Path) -> None:
    job_dir = make_job(model_dir, TINY_TEXT * 300, {"epochs": 50})
    w = Worker(job_dir, model_dir)
    w.until("progress")
    w.send("cancel")
    assert w.finish(timeout=10) == 2
    assert w.kinds()[-1] == "cancelled"
    assert store.list_versions(model_dir, "tiny") == []


def test_orphaned_worker_checkpoints_and_a_new_one_resumes(model_dir: Path) -> None:
    job_dir = make_job(model_dir, TINY_TEXT * 100, {"epochs": 3})
    w = Worker(job_dir, model_dir)
    w.until("progress")
    assert w.proc.stdin is not None
    w.proc.stdin.close()  # what a `kill -9` of the server looks like from here
    assert w.finish(timeout=30) == 3
    stopped = w.events[-1]
    assert stopped["event"] == "stopped" and stopped["checkpointed"] and stopped["step"] > 0
    assert checkpoint_path(job_dir / spool.CHECKPOINT_DIR).is_file()
    assert store.list_versions(model_dir, "tiny") == []

    resumed = Worker(job_dir, model_dir)
    assert resumed.finish() == 0
    assert resumed.events[0]["resumed_step"] == stopped["step"]
    assert resumed.events[-1]["event"] == "succeeded"
    total = w.events[-2]["info"]["total_steps"]
    assert total > stopped["step"] and resumed.events[-1]["metrics"]["steps"] == total
    assert store.list_versions(model_dir, "tiny") == [1]


@pytest.mark.parametrize(
    ("text", "extra", "reason"),
    [
        ("hello", {}, "unusable corpus: "),
        (TINY_TEXT * 5, {"max_params": 1000}, "over the limit of 1000"),
    ],
)
def test_failures_carry_a_reason(
    model_dir: Path, text: str, extra: dict[str, Any], reason: str
) -> None:
    job_dir = make_job(model_dir, text, {"epochs": 1}, **extra)
    w = Worker(job_dir, model_dir)
    assert w.finish() == 1
    failed = w.events[-1]
    assert failed["event"] == "failed" and reason in failed["error"], failed
    assert store.list_versions(model_dir, "tiny") == []
