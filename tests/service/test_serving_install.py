"""`make serve` installs the runtime dependencies only; `make test` adds the test extras.

Checked without a network: the commands make would run (`make -n`), and the dependency closure
of the runtime requirements as installed here, which must hold none of the test tools."""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
# Test extras that a runtime dependency needs as well (uvicorn[standard] -> PyYAML).
SHARED_WITH_RUNTIME = {"pyyaml"}


def make_dry_run(target: str, tmp_path: Path) -> str:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    # -B: as on a fresh clone (every stamp out of date); -n: print, run nothing.
    proc = subprocess.run(
        [make, "-n", "-B", target, f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_serving_installs_torch_then_the_project_without_extras(tmp_path: Path) -> None:
    commands = make_dry_run("serve", tmp_path)
    torch = re.search(r"pip install -q torch==\S+\n", commands)
    project = commands.find("pip install -q -e .\n")
    assert torch and 0 <= torch.start() < project, commands
    assert "[test]" not in commands and "/gatehouse serve" in commands


def test_testing_adds_the_test_extras(tmp_path: Path) -> None:
    commands = make_dry_run("test", tmp_path)
    extras = commands.index("pip install -q -e '.[test]'")
    assert commands.index("pip install -q -e .\n") < extras < commands.index("-m pytest")


def requirement_closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Distributions `name[extras]` pulls in, as installed here (markers evaluated here)."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, wanted = todo.pop()
        key = canonicalize_name(dist_name)
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            continue  # a marker-guarded optional dependency not installed here
        seen.add(key)
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            if canonicalize_name(req.name) not in seen:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_runtime_dependencies_pull_in_no_test_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    test_only = {
        canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["test"]
    }
    runtime = set()
    for line in project["dependencies"]:
        req = Requirement(line)
        runtime |= requirement_closure(req.name, frozenset(req.extras))
    assert "fastapi" in runtime and "torch" in runtime
    assert runtime & test_only <= SHARED_WITH_RUNTIME, sorted(runtime & test_only)
    # Nor anything only a test tool needs.
    for tool in ("pytest", "hypothesis", "schemathesis", "playwright", "ruff"):
        assert tool not in runtime, tool
