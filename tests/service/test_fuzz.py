"""Schemathesis against the live server's own /openapi.json: no 5xx, answers match the docs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    ]
)


def test_every_operation_survives_fuzzing(tiny_store, tmp_path, server_factory) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    # With a key set and none sent, /train and DELETE /jobs answer 401: fuzzing must not queue
    # real training jobs on a 2-core CI machine.
    server = server_factory(model_dir, "--no-bootstrap", "--api-key", "fuzz-secret")
    server.wait_ready()
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [str(cli), "run", server.url + "/openapi.json", "--checks", CHECKS]
    cmd += ["--max-examples", "25", "--generation-deterministic", "--workers", "1"]
    cmd += ["--max-time", "90", "--request-timeout", "20", "--no-color"]
    cmd += ["--output-truncate", "true", "--suppress-health-check", "all"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "passed" in done.stdout, report
    assert "Traceback" not in server.log(), server.log()[-4000:]


def test_text_that_is_not_unicode_never_gets_a_5xx(tiny_store, tmp_path, server_factory) -> None:
    """Every JSON body route, with a lone UTF-16 surrogate put into one of the drawn strings
    (tests/service/fuzz_hooks.py): a 4xx each time, never a 5xx, never a traceback."""
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    # No key, so sessions and their feeds are reached; /train is left out instead (no real
    # training jobs on a 2-core machine), and no session rate limit gets in the way.
    env = {"GATEHOUSE_SESSION_CREATE_RATE": "0"}
    server = server_factory(model_dir, "--no-bootstrap", env=env)
    server.wait_ready()
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [str(cli), "run", server.url + "/openapi.json", "--checks", "not_a_server_error"]
    cmd += ["--include-method", "POST", "--exclude-path", "/train"]
    cmd += ["--max-examples", "15", "--generation-deterministic", "--workers", "1"]
    cmd += ["--max-time", "40", "--request-timeout", "20", "--no-color"]
    cmd += ["--output-truncate", "true", "--suppress-health-check", "all"]
    hooks = {"SCHEMATHESIS_HOOKS": "tests.service.fuzz_hooks", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env={**os.environ, **hooks}
    )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "passed" in done.stdout and "Runtime Error" not in done.stdout, report
    assert "Traceback" not in server.log(), server.log()[-4000:]
