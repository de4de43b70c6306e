"""service.server: the uvicorn config it builds carries the edge limits from the settings."""

from __future__ import annotations

import resource
from pathlib import Path

from service.protocol import GuardedHttpToolsProtocol, connection_cap
from service.server import build_config, check_exposure, edge_limits
from service.settings import Settings


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(model_dir=tmp_path / "models", no_bootstrap=True, **kw)


def test_the_config_serves_the_guarded_protocol_with_the_settings_limits(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        max_header_bytes=4096,
        max_header_lines=20,
        header_timeout_s=3.5,
        body_idle_timeout_s=7.0,
        keep_alive_s=2.0,
        max_connections=50,
    )
    config = build_config(settings)
    assert isinstance(config.http, type) and issubclass(config.http, GuardedHttpToolsProtocol)
    limits = config.http.limits
    assert (limits.max_header_bytes, limits.max_header_lines) == (4096, 20)
    assert (limits.header_timeout_s, limits.body_idle_timeout_s) == (3.5, 7.0)
    assert config.http.cap == 50
    assert config.timeout_keep_alive == 2.0
    assert config.limit_concurrency is None  # on purpose: see build_config
    assert edge_limits(settings) == limits


def test_two_configs_do_not_share_limits(tmp_path: Path) -> None:
    a = build_config(_settings(tmp_path, max_header_bytes=2048)).http
    b = build_config(_settings(tmp_path, max_header_bytes=8192)).http
    assert a.limits.max_header_bytes == 2048 and b.limits.max_header_bytes == 8192


def test_the_default_cap_stays_under_the_open_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(0)
    if soft != resource.RLIM_INFINITY:
        assert 16 <= cap < soft
    assert connection_cap(7) == 7


def test_the_edge_settings_come_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEHOUSE_MAX_HEADER_BYTES", "65536")
    monkeypatch.setenv("GATEHOUSE_HEADER_TIMEOUT_S", "1.5")
    settings = _settings(tmp_path)
    assert settings.max_header_bytes == 65536 and settings.header_timeout_s == 1.5


def test_exposure_is_refused_without_a_key(tmp_path: Path) -> None:
    assert check_exposure(_settings(tmp_path)) is None
    assert check_exposure(_settings(tmp_path, host="0.0.0.0")) is not None
    assert check_exposure(_settings(tmp_path, host="0.0.0.0", api_key="k")) is None
    assert check_exposure(_settings(tmp_path, host="0.0.0.0", allow_open=True)) is None
