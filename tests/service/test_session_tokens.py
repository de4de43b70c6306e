"""Sessions belong to whoever opened them, and text that is not Unicode breaks nothing: one
real server process (API key from a file, inference open), real HTTP clients.

Each test speaks from its own loopback address (127.0.0.x, all routed to the server's
127.0.0.1), so per-client limits and per-client OIP sequences see distinct clients, and no
test spends another's session quota."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess

KEY = "file-kept-key-7f3a"
BURST = 6


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tokens")
    shutil.copytree(tiny_store, root / "models")
    key_file = root / "api-key"
    key_file.write_text(KEY + "\n")
    env = {
        "GATEHOUSE_API_KEY_FILE": str(key_file),
        "GATEHOUSE_SESSION_CREATE_BURST": str(BURST),
        "GATEHOUSE_SESSION_CREATE_RATE": "0.001",  # no refill within a test run
    }
    s = ServerProcess(root / "models", "--no-bootstrap", env=env)
    try:
        s.wait_ready(timeout=120)
        yield s
    finally:
        s.stop()


def client_at(server: ServerProcess, n: int, key: bool = True) -> httpx.Client:
    """A client whose connections come from 127.0.0.n."""
    transport = httpx.HTTPTransport(local_address=f"127.0.0.{n}")
    headers = {"authorization": f"Bearer {KEY}"} if key else {}
    return httpx.Client(base_url=server.url, transport=transport, headers=headers, timeout=30)


def open_session(client: httpx.Client, model: str = "lstm") -> tuple[str, str]:
    r = client.post("/sessions", json={"model": model})
    assert r.status_code == 201, r.text
    return r.json()["session_id"], r.json()["session_token"]


def raw_post(client: httpx.Client, path: str, body: str, **kw: object) -> httpx.Response:
    # The JSON text itself: `\ud800` stays the escape a client sends, a lone surrogate.
    headers = {"content-type": "application/json", **kw.pop("headers", {})}  # type: ignore[dict-item]
    return client.post(path, content=body.encode(), headers=headers)


def test_opening_a_session_needs_the_key_from_the_file(server: ServerProcess) -> None:
    with client_at(server, 2, key=False) as anonymous:
        r = anonymous.post("/sessions", json={"model": "lstm"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        wrong = anonymous.post(
            "/sessions", json={"model": "lstm"}, headers={"authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        # (a trailing space is trimmed on the wire: "Bearer " arrives as this)
        empty = anonymous.post("/sessions", json={}, headers={"authorization": "Bearer"})
        assert empty.status_code == 401
        # Inference stays open (no protect_inference): the key guards only what it should.
        assert anonymous.post("/predict", json={"text": "the sky"}).status_code == 200
    with client_at(server, 2) as keyed:
        sid, token = open_session(keyed)
        assert len(token) >= 32 and token != sid
    cmdline = Path(f"/proc/{server.proc.pid}/cmdline")
    if cmdline.exists():
        assert KEY not in cmdline.read_text(errors="replace")


def test_a_session_answers_only_to_its_own_token(server: ServerProcess) -> None:
    with client_at(server, 3) as owner, client_at(server, 4, key=False) as other:
        sid, token = open_session(owner)
        _, other_token = open_session(owner)
        mine = {"x-session-token": token}
        assert owner.post(f"/sessions/{sid}/feed", json={"text": "i grew up"}, headers=mine)
        for headers in ({}, {"x-session-token": other_token}, {"x-session-token": token[:-1]}):
            fed = other.post(f"/sessions/{sid}/feed", json={"text": "in france"}, headers=headers)
            assert fed.status_code == 403, fed.text
            assert "X-Session-Token" in fed.json()["message"]
            assert other.get(f"/sessions/{sid}", headers=headers).status_code == 403
            assert other.delete(f"/sessions/{sid}", headers=headers).status_code == 403
        # Nothing the others tried changed it; its owner (any address) goes on.
        info = other.get(f"/sessions/{sid}", headers=mine).json()
        assert info["history_length"] == 3 and info["feeds"] == 1
        assert "session_token" not in info  # answered once, when it was opened
        assert other.delete(f"/sessions/{sid}", headers=mine).status_code == 204
        assert other.get(f"/sessions/{sid}", headers=mine).status_code == 404


def test_a_feed_of_non_unicode_text_is_a_422_and_feeds_nothing(server: ServerProcess) -> None:
    with client_at(server, 5) as client:
        sid, token = open_session(client)
        mine = {"x-session-token": token}
        path = f"/sessions/{sid}/feed"
        for body in ['{"text": "i speak \\ud800"}', '{"text": "i \\udfff speak", "top_k": 3}']:
            r = raw_post(client, path, body, headers=mine)
            assert r.status_code == 422, r.text
            assert "surrogate" in r.json()["message"]
        r = raw_post(client, path, '{"text": "i speak", "top_k": true}', headers=mine)
        assert r.status_code == 422 and "boolean" in r.json()["message"]
        info = client.get(f"/sessions/{sid}", headers=mine).json()
        assert info["history_length"] == 0 and info["feeds"] == 0
        # A retry with the text fixed is the first feed, not the second.
        r = client.post(path, json={"text": "i speak"}, headers=mine)
        assert r.status_code == 200 and r.json()["history_length"] == 2


ROUTES = [
    ("/predict", '{"text": "i speak \\ud800"}'),
    ("/predict", '{"texts": ["the sky", "\\ud800"]}'),
    ("/predict", '{"text": "the sky", "model": "\\udbff"}'),
    ("/generate", '{"text": "i speak \\ud800", "max_words": 2}'),
    ("/generate", '{"text": "i speak", "stop": ["\\ud800"], "max_words": 2}'),
    ("/gates", '{"text": "i speak \\ud800"}'),
    ("/score", '{"text": "i speak \\ud800", "top_k": 2}'),
    ("/sessions", '{"model": "\\ud800"}'),
    ("/v1/completions", '{"model": "lstm", "prompt": "i \\ud800", "max_tokens": 1, "echo": true}'),
    ("/v1/completions", '{"model": "lstm", "prompt": "i", "user": "\\udc00"}'),
    ("/v1/completions", '{"model": "lstm", "prompt": "i", "\\ud800": 1}'),
    (
        "/v2/models/lstm/infer",
        '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["i \\ud800"]}]}',
    ),
    ("/v2/models/lstm/generate", '{"text_input": "i speak \\ud800", "max_tokens": 2}'),
    ("/train", '{"name": "x", "arch": "gru", "corpus": {"text": "a b \\ud800"}}'),
]
BOOLS = [
    ("/predict", '{"text": "the sky", "top_k": true}'),
    ("/predict", '{"text": "the sky", "temperature": true}'),
    ("/score", '{"text": "the sky", "top_k": true}'),
    ("/generate", '{"text": "the sky", "max_words": true}'),
    ("/generate", '{"text": "the sky", "seed": false}'),
    ("/gates", '{"text": "the sky", "units": [0, true]}'),
    ("/v1/completions", '{"model": "lstm", "prompt": "i", "max_tokens": true}'),
    ("/v1/completions", '{"model": "lstm", "prompt": "i", "logprobs": true}'),
]


@pytest.mark.parametrize(("path", "body"), ROUTES + BOOLS, ids=lambda v: v[:40])
def test_hostile_text_and_booleans_are_a_4xx_on_every_route(
    server: ServerProcess, path: str, body: str
) -> None:
    with client_at(server, 6) as client:
        r = raw_post(client, path, body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()  # a JSON body in the route's own error shape


def test_oip_parameters_that_are_booleans_are_a_400(server: ServerProcess) -> None:
    infer = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the sky"]}],
        "parameters": {"top_k": True},
    }
    with client_at(server, 6) as client:
        r = client.post("/v2/models/lstm/infer", json=infer)
        assert r.status_code == 400 and "boolean" in r.json()["error"]
        # The log shows no traceback for anything this module sent so far.
        assert "Traceback" not in server.log(), server.log()[-3000:]


def infer_step(text: str, **params: object) -> dict:
    return {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}],
        "parameters": {"top_k": 3, **params},
    }


def test_a_sequence_is_continued_only_by_the_client_that_started_it(
    server: ServerProcess,
) -> None:
    url = "/v2/models/lstm/infer"
    with client_at(server, 7) as starter, client_at(server, 8) as stranger:
        stranger.headers.pop("authorization")
        unkeyed = stranger.post(url, json=infer_step("i", sequence_id=42, sequence_start=True))
        assert unkeyed.status_code == 401 and "API key" in unkeyed.json()["error"]
        first = starter.post(url, json=infer_step("i grew up", sequence_id=42, sequence_start=True))
        assert first.status_code == 200, first.text
        # Another address with the same id sees no sequence of its own, and cannot end this one.
        r = stranger.post(url, json=infer_step("in", sequence_id=42, sequence_end=True))
        assert r.status_code == 400 and "has not started" in r.json()["error"]
        second = starter.post(url, json=infer_step("in france", sequence_id=42, sequence_end=True))
        assert second.status_code == 200, second.text
        # The same words as one session fed the same pieces.
        sid, token = open_session(starter)
        mine = {"x-session-token": token}
        starter.post(f"/sessions/{sid}/feed", json={"text": "i grew up"}, headers=mine)
        fed = starter.post(
            f"/sessions/{sid}/feed", json={"text": "in france", "top_k": 3}, headers=mine
        ).json()
        words = next(o for o in second.json()["outputs"] if o["name"] == "next_words")["data"]
        assert words == [p["word"] for p in fed["predictions"]]
        ended = starter.post(url, json=infer_step("more", sequence_id=42))
        assert ended.status_code == 400 and "has not started" in ended.json()["error"]


def test_session_creation_is_rate_limited_per_client(server: ServerProcess) -> None:
    with client_at(server, 9) as greedy, client_at(server, 10) as other:
        codes = [greedy.post("/sessions", json={}).status_code for _ in range(BURST + 2)]
        assert codes == [201] * BURST + [429, 429], codes
        refused = greedy.post("/sessions", json={})
        assert int(refused.headers["retry-after"]) >= 1
        assert "too many sessions" in refused.json()["message"]
        # OIP sequences open sessions too: the same limit.
        r = greedy.post(
            "/v2/models/lstm/infer", json=infer_step("the", sequence_id=1, sequence_start=True)
        )
        assert r.status_code == 429, r.text
        # Another client is not held back by this one.
        assert other.post("/sessions", json={}).status_code == 201
