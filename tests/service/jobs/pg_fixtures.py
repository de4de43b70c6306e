"""A real PostgreSQL for the job-store tests: one cluster per module, one database per test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons.postgres import PostgresServer, postgres_server

psycopg = pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with postgres_server(Path(tmp_path_factory.mktemp("pg"))) as server:
        yield server


def fresh_database(cluster: PostgresServer) -> str:
    """A new, empty database on the cluster; its URL."""
    name = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url(pg_cluster: PostgresServer) -> str:
    return fresh_database(pg_cluster)
