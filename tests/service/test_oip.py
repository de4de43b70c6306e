"""The Open Inference Protocol v2, driven by the real `tritonclient.http` (binary tensors by
default, and JSON) against a real server process, checked against /predict."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.helpers import ServerProcess

pytestmark = pytest.mark.numerics

TEXTS = ["the clouds are in the", "i grew up in france . i speak", "the keys to the old"]


@pytest.fixture(scope="module")
def server(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model_dir = tmp_path_factory.mktemp("oip") / "models"
    shutil.copytree(tiny_store, model_dir)
    # A long stream (see the disconnect test) takes far longer than closing it early does.
    proc = ServerProcess(model_dir, "--no-bootstrap", "--max-words", "5000")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def test_live_ready_and_metadata(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lstm") and client.is_model_ready("gru", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("gru", "7")
    meta = client.get_server_metadata()
    assert meta["name"] == "gatehouse" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("gru")
    assert model["name"] == "gru" and model["versions"] == ["1"]
    assert [i["name"] for i in model["inputs"]] == ["text"]
    assert {o["name"]: o["datatype"] for o in model["outputs"]} == {
        "next_words": "BYTES",
        "next_word_probs": "FP32",
        "num_tokens": "INT32",
        "gates_reset": "FP32",
        "gates_update": "FP32",
        "gates_candidate": "FP32",
        "hidden_state": "FP32",
    }
    lstm = {o["name"]: o["shape"] for o in client.get_model_metadata("lstm")["outputs"]}
    info = httpx.get(server.url + "/models/lstm").json()
    units = [-1, -1, info["num_layers"], info["hidden_size"]]
    assert lstm["gates_forget"] == lstm["cell_state"] == units and lstm["num_tokens"] == [-1]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_infer_equals_predict(
    client: triton.InferenceServerClient, server: ServerProcess, arch: str, binary: bool
) -> None:
    text = triton.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary)
    outputs = [
        triton.InferRequestedOutput("next_words", binary_data=binary),
        triton.InferRequestedOutput("next_word_probs", binary_data=binary),
    ]
    result = client.infer(arch, [text], outputs=outputs, parameters={"top_k": 4})
    words, probs = result.as_numpy("next_words"), result.as_numpy("next_word_probs")
    assert words.shape == (3, 4) and probs.shape == (3, 4)
    want = httpx.post(
        server.url + "/predict", json={"model": arch, "texts": TEXTS, "top_k": 4}
    ).json()["results"]
    for row_words, row_probs, res in zip(words, probs, want, strict=True):
        expected = [p["word"] for p in res["predictions"]]
        assert [w.decode() if isinstance(w, bytes) else w for w in row_words] == expected
        assert np.allclose(row_probs, [p["prob"] for p in res["predictions"]], atol=1e-5)
    assert result.get_response()["model_version"] == "1"


def test_default_outputs_come_back_binary(client: triton.InferenceServerClient) -> None:
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"the sky"], dtype=object))
    result = client.infer("lstm", [text], model_version="1")  # no outputs named: all, binary
    assert result.as_numpy("next_words").shape == (1, 5)
    assert result.as_numpy("next_word_probs").dtype == np.float32


GATE_OUTPUTS = {
    "rnn": {"hidden_state": "hidden"},
    "lstm": {
        "gates_input": "input",
        "gates_forget": "forget",
        "gates_candidate": "candidate",
        "gates_output": "output",
        "cell_state": "cell",
        "hidden_state": "hidden",
    },
    "gru": {
        "gates_reset": "reset",
        "gates_update": "update",
        "gates_candidate": "candidate",
        "hidden_state": "hidden",
    },
}


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_gate_outputs_equal_gates(
    client: triton.InferenceServerClient, server: ServerProcess, arch: str, binary: bool
) -> None:
    texts = ["the clouds are in the sky", "i speak"]  # two lengths: the shorter is padded
    text = triton.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary)
    names = [*GATE_OUTPUTS[arch], "num_tokens", "next_words"]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client.infer(arch, [text], outputs=outputs)
    counts = result.as_numpy("num_tokens")
    assert counts.dtype == np.int32 and counts.tolist() == [6, 2]
    assert result.as_numpy("next_words").shape == (2, 5)
    for b, t in enumerate(texts):
        want = httpx.get(server.url + "/gates", params={"text": t, "model": arch}).json()
        assert len(want["tokens"]) == counts[b]
        for name, key in GATE_OUTPUTS[arch].items():
            got = result.as_numpy(name)
            assert got.dtype == np.float32 and got.shape == (2, 6, 2, 16)
            for layer in want["layers"]:
                expected = np.array(layer["gates"][key])
                assert np.allclose(got[b, : counts[b], layer["layer"]], expected, atol=1e-6, rtol=0)
            assert not got[b, counts[b] :].any()  # the padding rows are zero


def test_gate_output_errors(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"the sky"], dtype=object))
    with pytest.raises(InferenceServerException) as e:  # a GRU has no forget gate
        client.infer("gru", [text], outputs=[triton.InferRequestedOutput("gates_forget")])
    assert e.value.status() == "400" and "unknown output 'gates_forget'" in e.value.message()
    assert "gates_reset" in e.value.message()  # ... and says what it has
    with pytest.raises(InferenceServerException) as e:
        client.infer(
            "lstm",
            [text],
            outputs=[triton.InferRequestedOutput("cell_state")],
            sequence_id=9,
            sequence_start=True,
        )
    assert e.value.status() == "400" and "sequence" in e.value.message()
    r = httpx.post(
        server.url + "/v2/models/lstm/infer",
        json={
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}],
            "outputs": [{"name": "gates_input"}, {"nope": 1}],
        },
    )
    assert r.status_code == 400 and r.json() == {"error": "outputs: each output needs a name"}


async def test_gate_outputs_keep_the_gate_limits(make_client, tmp_path, tiny_store) -> None:
    from tests.service.conftest import make_settings

    # 2 layers x 16 units x 6 keys = 192 values a token: one 4-token text fits, two do not.
    app = await make_client(make_settings(tiny_store, max_gate_values=192 * 5))
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a b c d"]}],
        "outputs": [{"name": "hidden_state"}],
    }
    r = await app.post("/v2/models/lstm/infer", json=body)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 4, 2, 16]
    body["inputs"][0].update(shape=[2], data=["a b c d", "e f g h"])
    r = await app.post("/v2/models/lstm/infer", json=body)
    assert r.status_code == 413 and "max_gate_values" in r.json()["error"]
    body["inputs"][0].update(shape=[1], data=["a b c d e f"])  # over the limit alone
    r = await app.post("/v2/models/lstm/infer", json=body)
    assert r.status_code == 413 and "max_gate_values" in r.json()["error"]


def test_errors_surface_through_the_client(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"the sky"], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [text])
    assert "unknown model 'nope'" in e.value.message() and e.value.status() == "404"
    with pytest.raises(InferenceServerException) as e:
        client.infer("lstm", [text], parameters={"top_k": 1000})
    assert "top_k" in e.value.message() and e.value.status() in ("400", "422")
    wrong = triton.InferInput("ids", [1], "INT64")
    wrong.set_data_from_numpy(np.array([3], dtype=np.int64))
    with pytest.raises(InferenceServerException) as e:
        client.infer("lstm", [wrong])
    assert "input 'text' is missing" in e.value.message()
    r = httpx.post(server.url + "/v2/models/lstm/infer", content=b"{", headers={})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(
        server.url + "/v2/models/lstm/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": "999"},
    )
    assert r.status_code == 400 and "outside the body" in r.json()["error"]


def test_a_three_step_sequence_equals_a_session(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    steps = ["i grew up in france .", "the clouds are in the sky .", "i speak fluent"]
    opened = httpx.post(server.url + "/sessions", json={"model": "lstm"}).json()
    sid, own = opened["session_id"], {"x-session-token": opened["session_token"]}
    for n, step in enumerate(steps):
        text = triton.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([step.encode()], dtype=object))
        result = client.infer(
            "lstm",
            [text],
            sequence_id=42,
            sequence_start=n == 0,
            sequence_end=n == len(steps) - 1,
            parameters={"top_k": 3},
        )
        fed = httpx.post(
            f"{server.url}/sessions/{sid}/feed", json={"text": step, "top_k": 3}, headers=own
        ).json()["predictions"]
        words = [w.decode() for w in result.as_numpy("next_words")[0]]
        assert words == [p["word"] for p in fed]
        assert np.allclose(
            result.as_numpy("next_word_probs")[0], [p["prob"] for p in fed], atol=1e-5
        )
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"more"], dtype=object))
    with pytest.raises(InferenceServerException) as e:  # ended: a new step needs a new start
        client.infer("lstm", [text], sequence_id=42)
    assert "has not started" in e.value.message()
    two = triton.InferInput("text", [2], "BYTES")
    two.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
    with pytest.raises(InferenceServerException) as e:
        client.infer("lstm", [two], sequence_id=7, sequence_start=True)
    assert "one text" in e.value.message()


def test_generate_extension_equals_generate(server: ServerProcess) -> None:
    base = server.url + "/v2/models/gru"
    opts = {"temperature": 1.2, "top_k": 8, "seed": 4}
    want = httpx.post(
        server.url + "/generate", json={"model": "gru", "text": TEXTS[0], "max_words": 6, **opts}
    ).json()
    body = {"text_input": TEXTS[0], "parameters": {"max_tokens": 6, **opts}}
    got = httpx.post(base + "/generate", json=body).json()
    assert got == {"model_name": "gru", "model_version": "1", "text_output": want["text"]}
    top_level = httpx.post(
        base + "/versions/1/generate", json={"text_input": TEXTS[0], "max_tokens": 6, **opts}
    )
    assert top_level.json()["text_output"] == want["text"]
    with httpx.stream("POST", base + "/generate_stream", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        pieces = [
            orjson.loads(line.removeprefix("data: "))["text_output"]
            for line in r.iter_lines()
            if line.startswith("data: ")
        ]
    assert [p.strip() for p in pieces] == want["words"]
    r = httpx.post(base + "/generate", json={"parameters": {}})
    assert r.status_code == 400 and "text_input" in r.json()["error"]
    for bad in (0, 10**6, "many"):  # the message names what the client sent
        r = httpx.post(base + "/generate", json={"text_input": "a", "max_tokens": bad})
        assert r.status_code == 400 and "max_tokens" in r.json()["error"]
        assert "max_words" not in r.json()["error"]


def test_a_generate_stream_closed_early_runs_no_more_passes(server: ServerProcess) -> None:
    def passes() -> float:
        text = httpx.get(server.url + "/metrics").text
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("gatehouse_batch_size_count") and 'model="rnn"' in ln
        )
        return float(line.rsplit(" ", 1)[1])

    body = {"text_input": "the sky", "max_tokens": 5000}
    before = passes()
    url = server.url + "/v2/models/rnn/generate_stream"
    with httpx.stream("POST", url, json=body, timeout=30) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data: ")
            if events == 3:
                break
    time.sleep(1.0)  # the server notices the disconnect; any pass still queued finishes
    after = passes()
    time.sleep(0.5)
    assert passes() == after  # nothing runs for it any more
    assert after - before < 1000


async def test_not_ready_without_models_and_only_v2_has_this_shape(make_client, tmp_path) -> None:
    from tests.service.conftest import make_settings

    empty = await make_client(make_settings(tmp_path / "empty"))
    r = await empty.get("/v2/health/ready")
    assert r.status_code == 503 and r.json() == {"error": "no model is loaded yet"}
    assert (await empty.get("/v2/health/live")).status_code == 200
    r = await empty.post("/v2/models/lstm/infer", json={"inputs": []})
    assert r.status_code == 400 and r.json() == {"error": "inputs: a non-empty list is required"}
    r = await empty.post("/predict", json={"text": "a"})
    assert r.json()["status"] == 503 and r.json()["error"] == "service_unavailable"
