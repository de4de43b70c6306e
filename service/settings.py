"""Server settings: flags override `GATEHOUSE_*` environment variables override defaults."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_model_dir() -> Path:
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEHOUSE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_dir: Path = Field(default_factory=default_model_dir)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    api_key: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = None
    api_key_file: Path | None = Field(
        None, description="read the API key from this file's first line (kept out of ps)"
    )
    protect_inference: bool = False  # also require the key on /predict, /gates, /sessions ...
    metrics_open: bool = Field(
        False, description="serve /metrics without the key even with protect_inference"
    )
    allow_open: bool = False  # serve on a non-loopback address without an API key
    no_bootstrap: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    default_model: str = "lstm"
    torch_threads: int = Field(0, ge=0, le=256)  # 0: one per core, decided at start-up
    reload_interval_s: float = Field(2.0, gt=0, le=3600)
    half: Literal["off", "bf16", "fp16"] = "off"  # bf16: CPU or CUDA; fp16: CUDA only
    # Comma-separated origins whose pages may call the API (CORS); empty: same origin only.
    cors_origins: str = ""

    # Limits, enforced before any work.
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_tokens: int = Field(2048, ge=1)
    max_texts: int = Field(64, ge=1)
    max_top_k: int = Field(100, ge=1)
    max_words: int = Field(200, ge=1)
    max_gate_tokens: int = Field(512, ge=1)
    max_gate_values: int = Field(2_000_000, ge=1)  # floats in one /gates answer

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
    keep_alive_s: float = Field(
        5.0, gt=0, le=3600, description="an idle keep-alive connection closes after this"
    )
    max_connections: int = Field(
        0, ge=0, le=1_000_000, description="open connections; 0: the open-file limit less 128"
    )
    drain_body_bytes: int = Field(
        8_388_608, ge=0, le=1 << 30, description="refused body read and dropped so 413 arrives"
    )

    # Dynamic batching (1 turns it off).
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_batch_delay_ms: float = Field(10.0, ge=0, le=1000)  # the most a forming batch waits
    max_queue: int = Field(1024, ge=1)

    # Sessions.
    max_sessions: int = Field(10_000, ge=1)
    session_ttl_s: float = Field(900.0, gt=0)
    session_create_rate: float = Field(
        1.0, ge=0, le=10_000, description="sessions one client may open per second (0: no limit)"
    )
    session_create_burst: int = Field(
        30, ge=1, le=1_000_000, description="sessions one client may open at once"
    )

    # Training jobs.
    data_dir: Path | None = None  # named datasets for POST /train {"dataset": name}
    max_corpus_bytes: int = Field(50_000_000, ge=1024)
    max_queued_jobs: int = Field(8, ge=1)
    max_running_jobs: int = Field(1, ge=1)
    job_threads: int = Field(1, ge=1, le=256)
    train_memory_budget_mb: int = Field(
        4096,
        ge=64,
        le=16_777_216,
        description="Refuse (422) a /train request whose estimated peak memory is over this",
    )

    @property
    def jobs_db(self) -> Path:
        return self.model_dir / "jobs.sqlite3"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]


_FLAGS: dict[str, dict[str, Any]] = {
    "host": {},
    "port": {"type": int},
    "model_dir": {},
    "device": {"choices": ["auto", "cpu", "cuda"]},
    "api_key": {},
    "protect_inference": {"action": "store_true", "default": None},
    "allow_open": {"action": "store_true", "default": None},
    "no_bootstrap": {"action": "store_true", "default": None},
    "log_level": {"choices": ["debug", "info", "warning", "error"]},
    "default_model": {},
    "torch_threads": {"type": int},
    "half": {"choices": ["off", "bf16", "fp16"]},
    "cors_origins": {"help": "comma-separated origins allowed to call the API, e.g. http://a:3000"},
    "max_body_bytes": {"type": int},
    "max_tokens": {"type": int},
    "max_texts": {"type": int},
    "max_top_k": {"type": int},
    "max_words": {"type": int},
    "max_gate_tokens": {"type": int},
    "max_gate_values": {"type": int},
    "max_batch_size": {"type": int},
    "max_batch_delay_ms": {"type": float},
    "max_queue": {"type": int},
    "max_sessions": {"type": int},
    "session_ttl_s": {"type": float},
    "data_dir": {},
    "max_corpus_bytes": {"type": int},
    "max_queued_jobs": {"type": int},
    "max_running_jobs": {"type": int},
    "job_threads": {"type": int},
}


def parse_args(argv: list[str] | None = None) -> Settings:
    """Flags win over env vars; a flag left out keeps the env var or the default."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Gatehouse: serve, inspect and train recurrent language models over HTTP.",
        epilog="Every flag is also an env var: --max-batch-size -> GATEHOUSE_MAX_BATCH_SIZE.",
    )
    for name, kw in _FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, **kw)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return Settings(**given)
