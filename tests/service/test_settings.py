"""Settings from one declaration: generated flags, env vars and a TOML file, and their errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.__main__ import other_env_names
from service.settings import Settings
from service.settings_flags import add_settings_flags, switch_flags
from service.settings_load import SettingsProblem, load, parse_args, settings_parser


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No GATEHOUSE_* variable of the calling shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("GATEHOUSE_"):
            monkeypatch.delenv(name)
    return monkeypatch


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gatehouse.toml"
    path.write_text(text)
    return str(path)


def test_precedence_flags_over_env_over_file_over_defaults(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    cfg = toml(tmp_path, "port = 1111\nmax_queue = 5\nmax_texts = 7\ndevice = 'cpu'\n")
    clean_env.setenv("GATEHOUSE_PORT", "2222")
    clean_env.setenv("GATEHOUSE_MAX_QUEUE", "6")
    s = parse_args(["--config", cfg, "--port", "3333"])
    assert s.port == 3333  # flag over env over file
    assert s.max_queue == 6  # env over file
    assert (s.max_texts, s.device) == (7, "cpu")  # file over default
    assert s.max_tokens == Settings.model_fields["max_tokens"].default


def test_config_file_from_env_var(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GATEHOUSE_CONFIG", toml(tmp_path, "reload_interval_s = 7.5\n"))
    assert parse_args([]).reload_interval_s == 7.5


def test_every_field_has_a_flag_with_its_description() -> None:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name} has no description (its help text)"


@pytest.mark.parametrize(
    "field", [f for f, i in Settings.model_fields.items() if i.annotation is bool]
)
def test_every_boolean_switches_both_ways(field: str, clean_env: pytest.MonkeyPatch) -> None:
    on, off = switch_flags(field)
    clean_env.setenv("GATEHOUSE_" + field.upper(), "1")
    assert getattr(parse_args([off]), field) is False
    clean_env.setenv("GATEHOUSE_" + field.upper(), "0")
    assert getattr(parse_args([on]), field) is True
    assert getattr(parse_args([]), field) is False


def test_no_protect_inference_overrides_the_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("GATEHOUSE_PROTECT_INFERENCE", "1")
    assert parse_args([]).protect_inference is True
    assert parse_args(["--no-protect-inference"]).protect_inference is False


def test_bootstrap_flag_undoes_the_file(tmp_path: Path) -> None:
    cfg = toml(tmp_path, "no_bootstrap = true\n")
    assert parse_args(["--config", cfg]).no_bootstrap is True
    assert parse_args(["--config", cfg, "--bootstrap"]).no_bootstrap is False


def test_reload_interval_has_a_flag() -> None:
    assert parse_args(["--reload-interval-s", "0.5"]).reload_interval_s == 0.5


@pytest.mark.parametrize(
    ("argv", "env", "file", "expected"),
    [
        (
            ["--max-batch-size", "0"],
            {},
            "",
            "invalid max_batch_size = '0' (from --max-batch-size): "
            "must be an integer from 1 to 4096",
        ),
        (
            [],
            {"GATEHOUSE_DEVICE": "tpu"},
            "",
            "invalid device = 'tpu' (from GATEHOUSE_DEVICE): must be one of auto, cpu, cuda",
        ),
        (
            [],
            {},
            "reload_interval_s = 0\n",
            "invalid reload_interval_s = 0 (from config file {cfg}): must be a number > 0 "
            "and <= 3600",
        ),
        (
            ["--port", "high"],
            {},
            "",
            "invalid port = 'high' (from --port): must be an integer from 0 to 65535",
        ),
        (
            [],
            {"GATEHOUSE_PROTECT_INFERENCE": "maybe"},
            "",
            "invalid protect_inference = 'maybe' (from GATEHOUSE_PROTECT_INFERENCE): "
            "must be true or false (1/0, yes/no, on/off)",
        ),
    ],
)
def test_invalid_value_is_one_line_exit_2(
    argv: list[str],
    env: dict[str, str],
    file: str,
    expected: str,
    tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = toml(tmp_path, file)
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", cfg, *argv], prog="gh")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"gh: error: {expected.format(cfg=cfg)}\n"


def test_api_key_flag_is_a_secret() -> None:
    s = parse_args(["--api-key", "s3cret"])
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_unknown_names_warned_by_name(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("GATEHOUSE_MAX_BATCH", "3")
    clean_env.setenv("GATEHOUSE_TRAIN_MAX_HIDDEN_SIZE", "64")  # TrainBounds reads it
    cfg = toml(tmp_path, "max-queue = 3\nfrobnicate = 1\n")
    s = parse_args(["--config", cfg], prog="gh", other_env=other_env_names)
    assert s.max_batch_size == 64 and s.max_queue == 1024  # unknown names change nothing
    assert capsys.readouterr().err.splitlines() == [
        "gh: warning: unknown variable GATEHOUSE_MAX_BATCH ignored "
        "(did you mean GATEHOUSE_MAX_BATCH_SIZE?)",
        f"gh: warning: config file {cfg}: unknown key 'max-queue' ignored "
        "(did you mean max_queue?)",
        f"gh: warning: config file {cfg}: unknown key 'frobnicate' ignored",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("port = \n", "not valid TOML"), (None, "not found")],
)
def test_bad_config_file_is_one_line(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "g.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SettingsProblem) as problem:
        load({}, str(path))
    line = str(problem.value)
    assert line.startswith(f"config file {path}: {expected}") and "\n" not in line


def test_misspelt_flag_is_not_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    parser = settings_parser("gh")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--protect"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --protect" in err


def test_help_shows_description_default_range_and_variable() -> None:
    text = " ".join(settings_parser("gh").format_help().split())
    assert "most requests in one forward pass (1: no batching) (default: 64; 1..4096;" in text
    assert "GATEHOUSE_MAX_BATCH_SIZE)" in text
    assert "--protect-inference, --no-protect-inference" in text
    assert "--no-bootstrap, --bootstrap" in text
