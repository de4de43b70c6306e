"""A real nginx balancing HTTP across upstream ports, on a free loopback port.

A replica that dies mid-request or refuses the connection is skipped and the request tried
on the next (`proxy_next_upstream`, POST included: a refused or reset connection means the
replica never answered). `max_fails=1 fail_timeout=2s` takes a dead replica out quickly.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port

from ._proc import find_binary, stop, wait_port

CONF = """
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream gatehouse {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gatehouse;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_next_upstream error timeout non_idempotent;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""


class Nginx:
    def __init__(self, folder: Path, upstream_ports: Sequence[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in upstream_ports
        )
        conf = folder / "nginx.conf"
        conf.write_text(CONF.format(folder=folder, servers=servers, port=self.port))
        self.log = folder / "error.log"
        self.log.touch()
        binary = find_binary("nginx", "/usr/sbin")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        stop(self.proc)


@contextmanager
def nginx(folder: Path, upstream_ports: Sequence[int]) -> Iterator[Nginx]:
    server = Nginx(folder, upstream_ports)
    try:
        yield server
    finally:
        server.stop()
