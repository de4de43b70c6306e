"""A bounded fuzz of raw HTTP/1.1 against a real server: broken request lines, headers,
lengths and chunked encodings. Whatever arrives, the answer is never a 5xx and the server
stays up."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import ServerProcess
from tests.service.rawhttp import connect, read_response

METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"G\x00T", b""]
PATHS = [
    b"/healthz",
    b"/readyz",
    b"/predict",
    b"/score",
    b"/gates",
    b"/sessions",
    b"/v1/completions",
    b"/v2/models/lstm/infer",
    b"/models",
    b"*",
    b"http://x/predict",
    b"/%zz",
    b"/predict?top_k=%ff",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b"HTTX/1.1", b""]
BODIES = [
    b"",
    b'{"texts": ["the clouds are in the"], "top_k": 3}',
    b'{"prompt": "the keys", "max_tokens": 2}',
    b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["the"]}]}',
    b'{"texts": [',
    b"\xff\xfe\x00",
    b"[]",
    b'{"texts": ["a"], "top_k": 1e309}',
]
SEEN: Counter[int] = Counter()  # every status the fuzz got back, checked at the end
token = st.binary(min_size=0, max_size=12)
header = st.one_of(
    st.tuples(st.sampled_from([b"Content-Type"]), st.sampled_from([b"application/json", b"x/y"])),
    st.tuples(
        st.sampled_from([b"Content-Length"]),
        st.one_of(st.integers(-5, 200).map(lambda n: str(n).encode()), token),
    ),
    st.tuples(
        st.sampled_from([b"Transfer-Encoding"]),
        st.sampled_from([b"chunked", b"gzip", b"chunked, chunked", b"identity", b" chunked"]),
    ),
    st.tuples(st.sampled_from([b"Expect", b"Connection", b"Host", b"X-Request-ID"]), token),
    st.tuples(token, token),
)


@st.composite
def chunked(draw: st.DrawFn) -> bytes:
    body = draw(st.sampled_from(BODIES))
    out = b""
    for piece in draw(st.lists(st.integers(0, 8), max_size=4)):
        part, body = body[:piece], body[piece:]
        size = draw(st.sampled_from([b"%x" % len(part), b"%x" % (len(part) + 3), b"zz", b"-1"]))
        ext = draw(st.sampled_from([b"", b";ext=1", b" ", b";\x00"]))
        out += size + ext + b"\r\n" + part + draw(st.sampled_from([b"\r\n", b"", b"\n"]))
    return out + draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nX-T: 1\r\n\r\n", b"", b"0\r\n"]))


@st.composite
def raw_request(draw: st.DrawFn) -> bytes:
    method = draw(st.one_of(st.sampled_from(METHODS), token))
    path = draw(st.one_of(st.sampled_from(PATHS), token))
    line = method + b" " + path + b" " + draw(st.sampled_from(VERSIONS))
    if draw(st.booleans()):
        line = draw(st.sampled_from([line.replace(b" ", b"  "), line + b" x", line[:-3]]))
    headers = draw(st.lists(header, max_size=6))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    head = line + eol + b"".join(k + b": " + v + eol for k, v in headers) + eol
    if draw(st.booleans()):
        return head + draw(chunked())
    return head + draw(st.sampled_from(BODIES))


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model_dir = tmp_path_factory.mktemp("fuzz") / "models"
    shutil.copytree(tiny_store, model_dir)
    # Short read deadlines: a request the fuzz left incomplete is answered 408 at once.
    env = {"GATEHOUSE_HEADER_TIMEOUT_S": "0.5", "GATEHOUSE_BODY_IDLE_TIMEOUT_S": "0.5"}
    proc = ServerProcess(model_dir, "--no-bootstrap", "--api-key", "fuzz-secret", env=env)
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        proc.stop()


def _statuses(response: bytes) -> list[int]:
    found = []
    for part in response.split(b"HTTP/1.1 ")[1:]:
        code = part[:3]
        if code.isdigit():
            found.append(int(code))
    return found


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=raw_request())
def test_no_raw_request_gets_a_5xx(server: ServerProcess, request: bytes) -> None:
    sock = connect(server.port)
    try:
        sock.sendall(request)
        answer = read_response(sock, timeout=3.0)
    except OSError:
        answer = b""
    finally:
        sock.close()
    SEEN.update(_statuses(answer))
    bad = [s for s in _statuses(answer) if s >= 500]
    assert not bad, (request[:300], answer[:300])


def test_the_server_survived_the_fuzz(server: ServerProcess) -> None:
    # The fuzz reached the parser's refusals, the edge's and the routes' (else it tested little).
    assert SEEN[400] and SEEN[401] + SEEN[404] + SEEN[405] + SEEN[422] and SEEN[200], SEEN
    start = time.monotonic()
    body = {"texts": ["the clouds are in the"], "top_k": 1}
    assert httpx.post(server.url + "/predict", json=body, timeout=10).status_code == 200
    assert time.monotonic() - start < 2.0
    log = server.log()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert not [e for e in lines if e.get("level") == "error"], log[-3000:]
