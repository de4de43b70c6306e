"""A real PostgreSQL for the job-store tests: one cluster per module, one database per test.

The cluster starts only for the tests that ask for `pg_url`; without psycopg (the `scale`
extra) or PostgreSQL's binaries those tests are skipped.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons.postgres import PostgresServer, postgres_server


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    pytest.importorskip("psycopg")
    with postgres_server(Path(tmp_path_factory.mktemp("pg"))) as server:
        yield server


@pytest.fixture
def pg_url(pg_cluster: PostgresServer) -> str:
    """A new, empty database on the cluster."""
    import psycopg

    name = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_cluster.url.rsplit("/", 1)[0] + "/" + name
