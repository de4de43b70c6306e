"""`/ui/comparison.json`: the models.compare report the Compare view draws, in process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from service.settings_load import parse_args
from tests.helpers import make_comparison_report
from tests.service.conftest import make_settings


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_comparison_report(tmp_path_factory.mktemp("compare"))


async def test_the_configured_report_is_served_as_written(
    make_client, tiny_store: Path, report: Path
) -> None:
    client = await make_client(make_settings(tiny_store, comparison_report=report))
    r = await client.get("/ui/comparison.json")
    assert r.status_code == 200
    body = r.json()
    assert body == json.loads(report.read_text(encoding="utf-8"))
    assert [k["arch"] for k in body["kinds"]] == ["rnn", "lstm", "gru"]
    assert all(len(k["curve"]) == 3 for k in body["kinds"])  # one point per epoch
    assert body["verdict"] in (report.parent.parent / "comparison.md").read_text()
    page = await client.get("/ui/compare")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


async def test_a_rewritten_report_shows_without_a_restart(
    make_client, tiny_store: Path, report: Path, tmp_path: Path
) -> None:
    mine = tmp_path / "report.json"
    shutil.copyfile(report, mine)
    client = await make_client(make_settings(tiny_store, comparison_report=mine))
    first = (await client.get("/ui/comparison.json")).json()
    changed = {**first, "verdict": "a second run's verdict"}
    staged = tmp_path / "staged.json"
    staged.write_text(json.dumps(changed), encoding="utf-8")
    os.replace(staged, mine)  # as models.compare writes it
    assert (await client.get("/ui/comparison.json")).json()["verdict"] == "a second run's verdict"


async def test_without_a_report_the_answer_says_how_to_make_one(
    make_client, tiny_store: Path
) -> None:
    client = await make_client(make_settings(tiny_store))
    r = await client.get("/ui/comparison.json")
    assert r.status_code == 404 and "models.compare" in r.json()["message"]
    assert "--comparison-report" in r.json()["message"]


@pytest.mark.parametrize(
    "content",
    [
        None,  # no such file
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"format": 99, "kinds": []}',
        b'{"format": 1, "kinds": "rnn"}',
        b"\xff\xfe",
    ],
)
async def test_a_bad_report_is_a_404_that_keeps_the_path_private(
    make_client, tiny_store: Path, tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "secret-folder" / "report.json"
    if content is not None:
        path.parent.mkdir()
        path.write_bytes(content)
    client = await make_client(make_settings(tiny_store, comparison_report=path))
    r = await client.get("/ui/comparison.json")
    assert r.status_code == 404
    assert "cannot be read" in r.json()["message"] and "secret-folder" not in r.text


def test_the_flag_and_the_variable_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["--comparison-report", "r.json"]).comparison_report == Path("r.json")
    monkeypatch.setenv("GATEHOUSE_COMPARISON_REPORT", "/x/report.json")
    assert parse_args([]).comparison_report == Path("/x/report.json")
