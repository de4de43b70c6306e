"""Server settings, declared once: flags, `GATEHOUSE_*` variables and a TOML file come from here.

Precedence: flags > environment > config file > defaults. `service.settings_flags` generates
the flags from these fields and `service.settings_load` reads the command line, the file and
the environment and explains a bad value in one line: a new field needs nothing but its
declaration below (a `description` is its help text).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "GATEHOUSE_"

# The config file's values while one Settings is built from them (see `build`): a source
# is constructed by the class, so the values of this one build reach it through here.
_FILE_VALUES: ContextVar[Mapping[str, Any] | None] = ContextVar("gatehouse_file", default=None)


def default_model_dir() -> Path:
    """`$XDG_DATA_HOME/gatehouse/models` (`~/.local/share/gatehouse/models` without it)"""
    # XDG data home: survives `git clean`, shared by `make serve` and `python -m models.train`.
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gatehouse" / "models"


def _blank_is_none(value: Any) -> Any:
    # `--api-key ""` or `GATEHOUSE_API_KEY=` is no key: never a key that an empty bearer
    # token matches, and never a reason to listen on a reachable address.
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(raw, str) and not raw.strip():
        return None
    return value


def _job_store(value: str) -> str:
    # The message never repeats the value: a URL may carry a password.
    if value == "sqlite" or value.startswith(("postgresql://", "postgres://")):
        return value
    raise ValueError("must be sqlite or a postgresql:// URL")


SESSION_STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def _session_store(value: str) -> str:
    value = value.strip()
    if value == "memory" or value.lower().startswith(SESSION_STORE_SCHEMES):
        return value
    # No echo of the value: it may be a URL with a password in it.
    raise ValueError("must be memory or a redis://, rediss:// or unix:// URL")


class _FileSource(PydanticBaseSettingsSource):
    """The parsed config file, ranked below the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        values = _FILE_VALUES.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {k: v for k, v in (_FILE_VALUES.get() or {}).items() if k in fields}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on (0: any free one)")
    model_dir: Path = Field(
        default_factory=default_model_dir,
        description="the model store: one folder per model name, one per version",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where inference runs (auto: CUDA when available)"
    )
    api_key: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Bearer key required to train and cancel jobs (unset: no key)"
    )
    api_key_file: Path | None = Field(
        None, description="read the API key from this file's first line (kept out of ps)"
    )
    protect_inference: bool = Field(
        False, description="also require the API key on /predict, /gates, /sessions and the rest"
    )
    metrics_open: bool = Field(
        False, description="serve /metrics without the key even with protect_inference"
    )
    allow_open: bool = Field(
        False, description="serve on a non-loopback address without an API key, on purpose"
    )
    no_bootstrap: bool = Field(
        False, description="do not train the default models when the store is empty"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe log level written"
    )
    opentelemetry: bool = Field(
        False,
        description="FastAPI's own OpenTelemetry spans and metrics, for a process that "
        "configures an OpenTelemetry SDK (off: no per-request provider lookup)",
    )
    default_model: str = Field("lstm", description="the model a request without one gets")
    torch_threads: int = Field(
        0, ge=0, le=256, description="torch threads for inference (0: one per core)"
    )
    reload_interval_s: float = Field(
        2.0, gt=0, le=3600, description="seconds between scans of the store for new versions"
    )
    half: Literal["off", "bf16", "fp16"] = Field(
        "off", description="serve in half precision (bf16: CPU or CUDA; fp16: CUDA only)"
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="server processes sharing the port, each its own engine (>1: shared stores)",
    )
    comparison_report: Path | None = Field(
        None,
        description="the report.json `python -m models.compare --report` writes, shown in "
        "the page's Compare view (unset: the view says how to make one)",
    )
    cors_origins: str = Field(
        "",
        description="comma-separated origins whose pages may call the API, e.g. "
        "http://a:3000 (empty: same origin only)",
    )

    # Limits, enforced before any work.
    max_body_bytes: int = Field(1_000_000, ge=1024, description="largest request body, in bytes")
    max_tokens: int = Field(2048, ge=1, description="most tokens in one text")
    max_texts: int = Field(64, ge=1, description="most texts in one batch request")
    max_top_k: int = Field(100, ge=1, description="largest top_k a request may ask for")
    max_words: int = Field(200, ge=1, description="most words one /generate may produce")
    max_gate_tokens: int = Field(512, ge=1, description="most tokens one /gates request shows")
    max_gate_values: int = Field(2_000_000, ge=1, description="most floats in one /gates answer")
    max_gate_queue: int = Field(
        2, ge=1, le=1024, description="/gates traces waiting or running at once; more get 503"
    )
    gate_share: float = Field(
        0.1, gt=0, le=1, description="most of the inference thread /gates takes while others wait"
    )
    gate_send_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a /gates client that reads no chunk this long is dropped"
    )

    # The HTTP edge (service.protocol), enforced before a request reaches the app.
    max_header_bytes: int = Field(
        32_768, ge=1024, le=16_777_216, description="request line + headers, bytes; more: 431"
    )
    max_header_lines: int = Field(
        100, ge=8, le=100_000, description="header fields per request; more: 431"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="seconds from connect to a complete request head; 408"
    )
    body_idle_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="longest silence inside a request body, seconds; 408"
    )
    # Longer than the idle limits of clients and proxies (httpx 5 s, aiohttp 15 s, nginx's
    # upstream keepalive 60 s), so they close an idle connection first: a server closing at
    # the same moment a client reuses the socket costs that client its request. Idle sockets
    # are the first shed when connections reach the cap, so a long wait is not a DoS.
    keep_alive_s: float = Field(
        75.0, gt=0, le=3600, description="an idle keep-alive connection closes after this"
    )
    max_connections: int = Field(
        0, ge=0, le=1_000_000, description="open connections; 0: the open-file limit less 128"
    )
    drain_body_bytes: int = Field(
        8_388_608, ge=0, le=1 << 30, description="refused body read and dropped so 413 arrives"
    )

    # Dynamic batching (1 turns it off).
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="most requests in one forward pass (1: no batching)"
    )
    max_batch_delay_ms: float = Field(
        10.0, ge=0, le=1000, description="the most a forming batch waits for more requests, ms"
    )
    max_queue: int = Field(1024, ge=1, description="most requests waiting for the model")
    max_queue_wait_ms: float = Field(
        500.0, ge=0, le=600_000, description="refuse (503) rows that would wait longer; 0: off"
    )

    # Sessions.
    max_sessions: int = Field(10_000, ge=1, description="most server-held sessions at once")
    session_ttl_s: float = Field(
        900.0, gt=0, description="seconds an idle session is kept before it expires"
    )
    session_create_rate: float = Field(
        1.0, ge=0, le=10_000, description="sessions one client may open per second (0: no limit)"
    )
    session_create_burst: int = Field(
        30, ge=1, le=1_000_000, description="sessions one client may open at once"
    )
    session_store: Annotated[str, AfterValidator(_session_store)] = Field(
        "memory",
        description="where sessions live: memory (this process) or a redis://, rediss:// or "
        "unix:// URL that every replica shares",
    )

    # Training jobs.
    data_dir: Path | None = Field(
        None, description='named datasets for POST /train {"dataset": name}'
    )
    max_corpus_bytes: int = Field(
        50_000_000, ge=1024, description="largest posted training corpus, in bytes"
    )
    max_queued_jobs: int = Field(8, ge=1, description="most training jobs waiting to run")
    max_running_jobs: int = Field(1, ge=1, description="most training jobs running at once")
    job_threads: int = Field(1, ge=1, le=256, description="torch threads per training job")
    train_memory_budget_mb: int = Field(
        4096,
        ge=64,
        le=16_777_216,
        description="Refuse (422) a /train request whose estimated peak memory is over this",
    )
    job_store: Annotated[str, AfterValidator(_job_store)] = Field(
        "sqlite",
        description="where job records live: sqlite (jobs.sqlite3 in the model store) or a "
        "postgresql:// URL shared by replicas and workers",
    )
    run_jobs: bool = Field(
        True, description="run queued training jobs in this process (off: accept and report only)"
    )
    job_lease_s: float = Field(
        15.0,
        ge=1,
        le=3600,
        description="PostgreSQL job store: a worker silent this long is dead, its job requeued",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    @property
    def jobs_db(self) -> Path:
        return self.model_dir / "jobs.sqlite3"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def build(flags: Mapping[str, Any], file_values: Mapping[str, Any]) -> Settings:
    """Settings from flags (given as keyword values) over env over `file_values` over defaults."""
    token = _FILE_VALUES.set(dict(file_values))
    try:
        return Settings(**flags)
    finally:
        _FILE_VALUES.reset(token)
