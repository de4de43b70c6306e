"""The HTTP contract, in process: shapes, values and error codes of every core endpoint."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.numerics

CONTRACT_MODEL_FIELDS = {
    "name", "arch", "version", "default", "device", "params", "vocab_size",
    "embedding_size", "hidden_size", "num_layers", "metrics",
}  # fmt: skip


async def test_health_and_ready(client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert sorted(r.json()["models"]) == ["gru", "lstm", "rnn"]


async def test_ready_is_503_without_models(make_client, tmp_path) -> None:
    from tests.service.conftest import make_settings

    c = await make_client(make_settings(tmp_path / "empty"))
    r = await c.get("/readyz")
    assert r.status_code == 503
    assert "message" in r.json()
    r = await c.post("/predict", json={"text": "the sky"})
    assert r.status_code == 503


async def test_models_list_and_detail(client) -> None:
    models = (await client.get("/models")).json()["models"]
    assert {m["name"] for m in models} == {"rnn", "lstm", "gru"}
    for m in models:
        assert CONTRACT_MODEL_FIELDS <= set(m)
        assert m["arch"] == m["name"] and m["version"] == 1 and m["params"] > 0
    assert [m["name"] for m in models if m["default"]] == ["lstm"]
    detail = (await client.get("/models/gru")).json()
    assert detail["versions"][0]["version"] == 1 and detail["versions"][0]["loaded"]
    assert (await client.get("/models/nope")).status_code == 404
    assert (await client.get("/models/..%2Fetc")).status_code == 404


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
async def test_predict_single(client, arch: str) -> None:
    r = await client.post(
        "/predict", json={"model": arch, "text": "The clouds are in the", "top_k": 4}
    )
    assert r.status_code == 200
    body = r.json()
    assert (body["model"], body["version"], body["arch"]) == (arch, 1, arch)
    assert body["tokens"] == ["the", "clouds", "are", "in", "the"]
    probs = [p["prob"] for p in body["predictions"]]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True)
    assert all(0 < p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6


async def test_predict_batch_equals_single_and_reports_unknown(client) -> None:
    texts = ["the clouds are", "i grew up in xyzzy land"]
    batch = (await client.post("/predict", json={"texts": texts, "top_k": 3})).json()["results"]
    for text, res in zip(texts, batch, strict=True):
        one = (await client.post("/predict", json={"text": text, "top_k": 3})).json()
        assert [p["word"] for p in one["predictions"]] == [p["word"] for p in res["predictions"]]
        for a, b in zip(one["predictions"], res["predictions"], strict=True):
            assert abs(a["prob"] - b["prob"]) < 1e-5
    assert batch[1]["unknown"] == ["xyzzy", "land"]
    assert batch[1]["tokens"][-2:] == ["xyzzy", "land"]


async def test_predict_top_k_capped_by_vocab_and_temperature_flattens(client) -> None:
    full = (await client.post("/predict", json={"text": "the", "top_k": 100})).json()
    vocab = (await client.get("/models/lstm")).json()["vocab_size"]
    assert len(full["predictions"]) == vocab
    assert math.isclose(sum(p["prob"] for p in full["predictions"]), 1.0, rel_tol=1e-4)
    cold = (await client.post("/predict", json={"text": "the", "temperature": 0.1})).json()
    hot = (await client.post("/predict", json={"text": "the", "temperature": 10})).json()
    assert (
        cold["predictions"][0]["prob"]
        > full["predictions"][0]["prob"]
        > hot["predictions"][0]["prob"]
    )


async def test_predict_pinned_version(client) -> None:
    r = await client.post("/predict", json={"model": "gru@1", "text": "the sky"})
    assert r.status_code == 200 and r.json()["version"] == 1
    assert (await client.post("/predict", json={"model": "gru@7", "text": "x"})).status_code == 404
    for bad in ["gru@0", "gru@", "GRU", "../gru", "gru@1@2"]:
        r = await client.post("/predict", json={"model": bad, "text": "x"})
        assert r.status_code == 422, bad


async def test_generate_greedy_and_seeded(client) -> None:
    req = {"model": "gru", "text": "the clouds", "max_words": 5}
    a = (await client.post("/generate", json=req)).json()
    b = (await client.post("/generate", json=req)).json()
    assert a == b and len(a["words"]) == 5 and "<unk>" not in a["words"]
    assert a["text"].startswith("the clouds")
    sampled = {**req, "temperature": 2.0, "top_k": 10, "seed": 3}
    s1 = (await client.post("/generate", json=sampled)).json()
    s2 = (await client.post("/generate", json=sampled)).json()
    assert s1["words"] == s2["words"]
    r = await client.post("/generate", json={**req, "max_words": 10_000})
    assert r.status_code == 422 and "max_words" in r.json()["message"]


@pytest.mark.parametrize(
    "arch,keys",
    [
        ("rnn", {"hidden"}),
        ("lstm", {"input", "forget", "candidate", "output", "cell", "hidden"}),
        ("gru", {"reset", "update", "candidate", "hidden"}),
    ],
)
async def test_gates_shapes_and_ranges(client, arch: str, keys: set[str]) -> None:
    text = "i grew up in france . i speak fluent"
    body = (await client.post("/gates", json={"model": arch, "text": text})).json()
    assert body["tokens"] == text.split()
    assert [layer["layer"] for layer in body["layers"]] == [0, 1]
    for layer in body["layers"]:
        assert set(layer["gates"]) == keys
        for key, rows in layer["gates"].items():
            assert len(rows) == 9 and all(len(r) == 16 for r in rows)
            flat = [v for r in rows for v in r]
            if key in {"input", "forget", "output", "reset", "update"}:
                assert all(0 <= v <= 1 for v in flat)
            elif key != "cell":
                assert all(-1 <= v <= 1 for v in flat)
    assert set(body["summary"]["layers"][0]["gates"]) == keys


async def test_gates_obey_the_cell_equations(client) -> None:
    lstm = (await client.post("/gates", json={"model": "lstm", "text": "the key to the"})).json()
    for layer in lstm["layers"]:
        g = layer["gates"]
        c_prev = [0.0] * 16
        for t in range(4):
            for u in range(16):
                c = g["forget"][t][u] * c_prev[u] + g["input"][t][u] * g["candidate"][t][u]
                assert abs(c - g["cell"][t][u]) < 1e-5
                assert abs(g["output"][t][u] * math.tanh(c) - g["hidden"][t][u]) < 1e-5
            c_prev = g["cell"][t]
    gru = (await client.post("/gates", json={"model": "gru", "text": "the key to the"})).json()
    for layer in gru["layers"]:
        g = layer["gates"]
        h_prev = [0.0] * 16
        for t in range(4):
            for u in range(16):
                z, n = g["update"][t][u], g["candidate"][t][u]
                assert abs((1 - z) * n + z * h_prev[u] - g["hidden"][t][u]) < 1e-5
            h_prev = g["hidden"][t]


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
async def test_gates_predictions_agree_with_predict(client, arch: str) -> None:
    req = {"model": arch, "text": "the keys to the old cabinet", "top_k": 5}
    gates = (await client.post("/gates", json=req)).json()["predictions"]
    predict = (await client.post("/predict", json=req)).json()["predictions"]
    assert [p["word"] for p in gates] == [p["word"] for p in predict]
    for a, b in zip(gates, predict, strict=True):
        assert abs(a["prob"] - b["prob"]) < 1e-5


async def test_gates_subsets_rounding_and_get(client) -> None:
    req = {"model": "lstm", "text": "the clouds", "layers": [1], "units": [0, 3, 5], "round": 2}
    post = (await client.post("/gates", json=req)).json()
    assert [layer["layer"] for layer in post["layers"]] == [1]
    assert post["units"] == [0, 3, 5]
    rows = post["layers"][0]["gates"]["forget"]
    assert len(rows) == 2 and all(len(r) == 3 for r in rows)
    assert all(round(v, 2) == v for r in rows for v in r)
    get = (
        await client.get(
            "/gates",
            params={
                "model": "lstm",
                "text": "the clouds",
                "layers": "1",
                "units": "0,3,5",
                "round": 2,
            },
        )
    ).json()
    assert get == post
    full = (await client.post("/gates", json={"model": "lstm", "text": "the clouds"})).json()
    assert [r[3] for r in full["layers"][1]["gates"]["forget"]] == pytest.approx(
        [r[1] for r in rows], abs=0.006
    )
    summary = (await client.post("/gates", json={**req, "summary_only": True})).json()
    assert summary["layers"] == [] and summary["summary"]["layers"][0]["layer"] == 1


@pytest.mark.parametrize(
    "req,status",
    [
        ({"text": ""}, 422),
        ({"text": "   \n\t "}, 422),
        ({"text": "a", "texts": ["b"]}, 422),
        ({}, 422),
        ({"text": "a", "top_k": 0}, 422),
        ({"text": "a", "top_k": 101}, 422),
        ({"text": "a", "temperature": 0}, 422),
        ({"text": "a", "temperature": 101}, 422),
        ({"text": "a", "topk": 3}, 422),
        ({"text": 5}, 422),
        ({"texts": []}, 422),
        ({"texts": ["a"] * 65}, 413),
        ({"text": "a " * 2049}, 413),
        ({"model": "nope", "text": "a"}, 404),
    ],
)
async def test_predict_errors(client, req: dict, status: int) -> None:
    r = await client.post("/predict", json=req)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["message"], str) and r.json()["status"] == status


async def test_transport_level_errors(client) -> None:
    r = await client.post(
        "/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422)
    r = await client.post("/predict", content=b"text=a", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    big = b'{"text": "' + b"a " * 600_000 + b'"}'
    r = await client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["message"]
    r = await client.post("/predict", content=b'{"text": "a\\u0000b\\u0007 \xc3\xa9t\xc3\xa9"}',
                          headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 200
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.delete("/predict")).status_code == 405


async def test_gates_value_limit(make_client, tiny_store) -> None:
    from tests.service.conftest import make_settings

    c = await make_client(make_settings(tiny_store, max_gate_values=100))
    r = await c.post("/gates", json={"model": "lstm", "text": "the clouds are in the sky"})
    assert r.status_code == 413 and "max_gate_values" in r.json()["message"]
    r = await c.post("/gates", json={"model": "lstm", "text": "the sky", "summary_only": True})
    assert r.status_code == 200
    r = await c.post("/gates", json={"model": "lstm", "text": "the sky", "units": [99]})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "raw", [b'{"text": "a", "temperature": Infinity}', b'{"text": "a", "top_k": NaN}']
)
async def test_non_finite_numbers_are_422(client, raw: bytes) -> None:
    r = await client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize(
    "params",
    [
        {"text": "  "},
        {"text": "a", "units": "x"},
        {"text": "a", "units": "5-2"},
        {"text": "a", "layers": "9"},
    ],
)
async def test_get_gates_bad_query_is_422(client, params: dict) -> None:
    r = await client.get("/gates", params=params)
    assert r.status_code == 422 and r.json()["message"]


async def test_tiny_temperatures_are_refused_not_nan(client) -> None:
    r = await client.post("/predict", json={"text": "the", "temperature": 1e-300})
    assert r.status_code == 422
    r = await client.post("/generate", json={"text": "the", "max_words": 2, "temperature": 1e-9})
    assert r.status_code == 422
    r = await client.post("/predict", json={"text": "the", "temperature": 0.01, "top_k": 100})
    assert all(math.isfinite(p["prob"]) for p in r.json()["predictions"])


async def test_chunked_body_over_the_limit_is_413(client) -> None:
    async def chunks():
        yield b'{"text": "the clouds"}'
        for _ in range(40):
            yield b" " * 50_000  # valid JSON so far: the route must still never see it

    r = await client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
