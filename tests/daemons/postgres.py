"""A real PostgreSQL cluster in a temporary folder on a free loopback port.

initdb and postgres refuse to run as root, so as root the cluster belongs to the `postgres`
system user (Debian's package creates it) and runs through `runuser`, in a folder of its own
under the system temporary directory (pytest's folders are private to root). Authentication
is `trust` on loopback: the URL carries no password.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import free_port

from ._proc import find_binary, stop, wait_port

PG_DIRS = ("/usr/lib/postgresql/*/bin",)


def _as_owner() -> tuple[list[str], str | None]:
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no `postgres` user to own the cluster")
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"], "postgres"


class PostgresServer:
    def __init__(self, folder: Path, database: str = "gatehouse") -> None:
        initdb = find_binary("initdb", *PG_DIRS)
        postgres = str(Path(initdb).with_name("postgres"))
        createdb = str(Path(initdb).with_name("createdb"))
        if not Path(createdb).exists():
            createdb = find_binary("createdb", *PG_DIRS)
        prefix, owner = _as_owner()
        self.own_folder: Path | None = None
        if owner is not None:
            folder = self.own_folder = Path(tempfile.mkdtemp(prefix="gatehouse-pg-"))
            folder.chmod(0o755)
        self.port = free_port()
        self.data = folder / "pgdata"
        self.socket_dir = folder / "pgsock"
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            shutil.chown(folder, owner)
            shutil.chown(self.socket_dir, owner)
        self.log = folder / "postgres.log"
        _run([*prefix, initdb, "-D", str(self.data), "-A", "trust", "-U", "gatehouse", "--no-sync"])
        self.log.touch()
        if owner is not None:
            shutil.chown(self.log, owner)
        args = [*prefix, postgres, "-D", str(self.data), "-p", str(self.port)]
        args += [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
        ]
        args += ["-c", "fsync=off", "-c", "max_connections=200"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, self.log)
        _run(
            [
                *prefix,
                createdb,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "gatehouse",
                database,
            ]
        )
        self.url = f"postgresql://gatehouse@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        stop(self.proc)
        if self.own_folder is not None:
            shutil.rmtree(self.own_folder, ignore_errors=True)


def _run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{args[-1]} failed ({done.returncode}): {done.stderr[-2000:]}")


@contextmanager
def postgres_server(folder: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(folder)
    try:
        yield server
    finally:
        server.stop()
