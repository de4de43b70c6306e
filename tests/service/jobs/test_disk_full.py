"""A disk that fills up while a job saves its version: the job fails cleanly, nothing partial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models import store
from tests.helpers import REPO, TINY_TEXT
from tests.service.jobs.test_worker import make_job

# The real worker process, with the weights write failing as a full disk makes it fail.
FULL_DISK_WORKER = """
import errno, sys
import models.store
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
models.store.save_file = no_space
from service.jobs.worker import main
sys.exit(main(sys.argv[1:]))
"""


def test_enospc_while_saving_fails_the_job_without_a_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    job_dir = make_job(model_dir, TINY_TEXT * 50, {"epochs": 1}, name="full-disk")
    cmd = [sys.executable, "-c", FULL_DISK_WORKER, "--job-dir", str(job_dir)]
    cmd += ["--model-dir", str(model_dir)]
    # stdin stays open while it trains: to a worker, its end means "the server is gone".
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out = proc.stdout.read()  # type: ignore[union-attr]
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert events and events[-1]["event"] == "failed", events
    assert "ENOSPC: No space left on device" in events[-1]["error"]
    assert "no version was created" in events[-1]["error"]
    assert code != 0
    assert store.list_versions(model_dir, "full-disk") == []
    assert [p.name for p in (model_dir / "full-disk").iterdir()] == []  # no temp litter
