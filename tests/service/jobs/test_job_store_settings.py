"""Choosing the job store: the setting, its checks, and a URL's password kept out of sight."""

from __future__ import annotations

import pytest

from service.exposure import _masked
from service.jobs import claimer
from service.jobs.store import describe, is_shared
from service.redact import without_credentials
from service.settings import Settings
from service.settings_load import SettingsProblem, load

SECRET = "s3cret:p@ss"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://app:{SECRET}@db:5432/jobs", "postgresql://***@db:5432/jobs"),
        (
            f"postgres://app:{SECRET}@db/jobs?sslmode=require",
            "postgres://***@db/jobs?sslmode=require",
        ),
        (
            f"postgresql://db/jobs?user=app&password={SECRET}",
            "postgresql://db/jobs?user=app&password=***",
        ),
        ("postgresql://app@db/jobs", "postgresql://***@db/jobs"),
        ("sqlite", "sqlite"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
    assert describe(url) == shown


def test_the_store_setting_takes_sqlite_or_a_postgresql_url() -> None:
    assert Settings().job_store == "sqlite" and not is_shared("sqlite")
    assert is_shared(Settings(job_store="postgres://h/db").job_store)
    with pytest.raises(SettingsProblem) as caught:
        load({"job_store": f"mysql://app:{SECRET}@db/jobs"})
    message = str(caught.value)
    assert SECRET not in message and "postgresql://" in message and "--job-store" in message


def test_the_process_title_masks_a_url_password() -> None:
    argv = [
        "x",
        "--job-store",
        f"postgresql://a:{SECRET}@h/d",
        f"--job-store=postgres://a:{SECRET}@h/d",
    ]
    masked = _masked(argv)
    assert not any(SECRET in a for a in masked)
    assert masked[2] == "postgresql://***@h/d" and masked[3] == "--job-store=postgres://***@h/d"


def test_a_worker_refuses_a_store_it_cannot_share(capsys: pytest.CaptureFixture[str]) -> None:
    assert claimer.main(["--job-store", "sqlite"]) == 2
    assert "shared job store" in capsys.readouterr().err
    assert claimer.main(["--job-store", "postgresql://h/d", "--no-run-jobs"]) == 2
