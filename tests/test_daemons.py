"""The scale-out tests' daemons start, answer and stop (tests/daemons)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import httpx

from tests.daemons.nginx import nginx
from tests.daemons.postgres import postgres_server
from tests.daemons.redis import redis_server


def test_redis_answers(tmp_path: Path) -> None:
    import redis

    with redis_server(tmp_path) as server:
        r = redis.Redis.from_url(server.url)
        r.set("k", b"v")
        assert r.get("k") == b"v"
        r.close()


def test_postgres_answers(tmp_path: Path) -> None:
    import psycopg

    with postgres_server(tmp_path) as server, psycopg.connect(server.url) as conn:
        assert conn.execute("select 1 + 1").fetchone() == (2,)


def test_nginx_balances_and_skips_a_dead_upstream(tmp_path: Path) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            body = b"hello"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    live = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=live.serve_forever, daemon=True).start()
    from tests.helpers import free_port

    dead = free_port()  # nothing listens there
    try:
        with nginx(tmp_path / "nginx", [dead, live.server_address[1]]) as lb:
            for _ in range(6):
                r = httpx.get(lb.url + "/")
                assert r.status_code == 200 and r.text == "hello"
    finally:
        live.shutdown()
