"""Two real server processes sharing one Redis and one model store: a session opened on one
is seen, fed and ended on the other, and `kill -9` of the replica that served a session's last
feed loses nothing: the next feed on the survivor equals a single in-memory server's answer."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.daemons.redis import redis_server
from tests.helpers import ServerProcess, make_tiny_store

pytestmark = pytest.mark.timeout(240)

PASSWORD = "pw-Kq81-never-shown"
FIRST, SECOND, THIRD = "i grew up in france .", "the clouds are in the", "sky . i speak"


def _open(client: httpx.Client, model: str) -> tuple[str, dict[str, str]]:
    r = client.post("/sessions", json={"model": model})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["session_id"], {"x-session-token": body["session_token"]}


def _feed(client: httpx.Client, sid: str, auth: dict[str, str], text: str) -> dict:
    r = client.post(f"/sessions/{sid}/feed", json={"text": text, "top_k": 8}, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def _same_answer(got: dict, want: dict) -> None:
    assert got["history_length"] == want["history_length"]
    assert got["tokens"] == want["tokens"]
    assert [p["word"] for p in got["predictions"]] == [p["word"] for p in want["predictions"]]
    for g, w in zip(got["predictions"], want["predictions"], strict=True):
        assert abs(g["prob"] - w["prob"]) <= 1e-5, (g, w)


def _gauge(text: str, model: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'gatehouse_sessions_active{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_any_replica_takes_the_next_feed(tmp_path: Path) -> None:
    models = make_tiny_store(tmp_path / "shared" / "models")
    alone = shutil.copytree(models, tmp_path / "alone" / "models")  # the same files
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as daemon:
        redis.Redis.from_url(daemon.url).config_set("requirepass", PASSWORD)
        url = f"redis://:{PASSWORD}@127.0.0.1:{daemon.port}/0"
        # One replica told by the environment, the other by the flag (which ps must not show).
        a = ServerProcess(models, env={"GATEHOUSE_SESSION_STORE": url})
        b = ServerProcess(models, "--session-store", url)
        single = ServerProcess(alone)
        servers = [a, b, single]
        try:
            for s in servers:
                s.wait_ready(timeout=120)
            with (
                httpx.Client(base_url=a.url, timeout=30) as on_a,
                httpx.Client(base_url=b.url, timeout=30) as on_b,
                httpx.Client(base_url=single.url, timeout=30) as ref,
            ):
                # Opened on B: seen, refused without its token, and ended on A.
                sid, auth = _open(on_b, "gru")
                _feed(on_b, sid, auth, FIRST)
                seen = on_a.get(f"/sessions/{sid}", headers=auth)
                assert seen.status_code == 200, seen.text
                assert seen.json()["history_length"] == 6 and seen.json()["version"] == 1
                assert on_a.get(f"/sessions/{sid}").status_code == 403
                wrong = {"x-session-token": "not-the-token"}
                assert on_a.delete(f"/sessions/{sid}", headers=wrong).status_code == 403
                assert on_a.delete(f"/sessions/{sid}", headers=auth).status_code == 204
                assert on_b.get(f"/sessions/{sid}", headers=auth).status_code == 404
                assert (
                    on_b.post(
                        f"/sessions/{sid}/feed", json={"text": "the"}, headers=auth
                    ).status_code
                    == 404
                )

                # Opened and fed on A, and on the single in-memory server.
                pairs = {}
                for arch in ("rnn", "lstm", "gru"):
                    sid, auth = _open(on_a, arch)
                    ref_sid, ref_auth = _open(ref, arch)
                    _same_answer(
                        _feed(on_a, sid, auth, FIRST), _feed(ref, ref_sid, ref_auth, FIRST)
                    )
                    pairs[arch] = (sid, auth, ref_sid, ref_auth)

                a.stop(signal.SIGKILL)  # the replica that served every last feed

                for arch, (sid, auth, ref_sid, ref_auth) in pairs.items():
                    for text in (SECOND, THIRD):
                        _same_answer(
                            _feed(on_b, sid, auth, text), _feed(ref, ref_sid, ref_auth, text)
                        )
                    info = on_b.get(f"/sessions/{sid}", headers=auth).json()
                    assert (info["model"], info["feeds"]) == (arch, 3)

                # B's gauge counts the sessions A opened (its sweep reads them from Redis).
                deadline = time.monotonic() + 30
                while _gauge(on_b.get("/metrics").text, "lstm") != 1.0:
                    assert time.monotonic() < deadline, on_b.get("/metrics").text
                    time.sleep(0.5)
                metrics_text = on_b.get("/metrics").text
            # The password is in no log, no /metrics answer and no process title.
            cmdline = Path(f"/proc/{b.proc.pid}/cmdline").read_bytes().decode(errors="replace")
            assert "--session-store" in cmdline
            for where in (a.log(), b.log(), metrics_text, cmdline):
                assert PASSWORD not in where
        finally:
            for s in servers:
                s.stop()
