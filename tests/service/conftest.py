from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.helpers import ServerProcess, make_tiny_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rnn, lstm and gru, tiny and untrained; read-only for tests (copy it to write)."""
    return make_tiny_store(tmp_path_factory.mktemp("store") / "models")


def make_settings(model_dir: Path, **overrides: object) -> Settings:
    return Settings(model_dir=model_dir, no_bootstrap=True, torch_threads=1, **overrides)


@pytest.fixture
async def make_client() -> AsyncIterator:
    """In-process app (lifespan run) + httpx client over ASGITransport."""
    stack = []

    async def _make(settings: Settings) -> httpx.AsyncClient:
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        stack.append((lifespan, client))
        return client

    yield _make
    for lifespan, client in reversed(stack):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client, tiny_store: Path) -> httpx.AsyncClient:
    return await make_client(make_settings(tiny_store))


@pytest.fixture
def server_factory() -> Iterator:
    servers: list[ServerProcess] = []

    def _start(model_dir: Path, *args: str, **kw: object) -> ServerProcess:
        s = ServerProcess(model_dir, *args, **kw)  # type: ignore[arg-type]
        servers.append(s)
        return s

    yield _start
    for s in servers:
        s.stop()
