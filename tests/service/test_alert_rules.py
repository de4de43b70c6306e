"""docker/alerts.yml against its unit tests (docker/alerts.test.yml) under `promtool test rules`:
every alert is shown firing on some input and silent on another."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
RULES = DOCKER / "alerts.yml"
RULE_TESTS = DOCKER / "alerts.test.yml"


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alert_cases() -> list[dict]:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    return [case for t in tests for case in t.get("alert_rule_test", [])]


def test_promtool_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make system-deps` installs it"
    # Run from docker/ so rule_files resolve as they do for the compose stack's Prometheus.
    proc = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=DOCKER,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("alert", [r["alert"] for r in rules() if "alert" in r])
def test_every_alert_is_tested_firing_and_silent(alert: str) -> None:
    cases = [c for c in alert_cases() if c["alertname"] == alert]
    assert any(c.get("exp_alerts") for c in cases), f"{alert} is never shown firing"
    assert any(not c.get("exp_alerts") for c in cases), f"{alert} is never shown silent"


def test_every_recording_rule_is_used_or_checked() -> None:
    """A recorded series nobody reads or checks is dead weight; each one feeds an alert or is
    checked for its value by a promql_expr_test."""
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checked = {e["expr"].split("{")[0] for t in tests for e in t.get("promql_expr_test", [])}
    alert_exprs = " ".join(r["expr"] for r in rules() if "alert" in r)
    for record in (r["record"] for r in rules() if "record" in r):
        assert record in checked or record in alert_exprs, record
