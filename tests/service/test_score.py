"""POST /score and the engine's scoring: values against /predict, batching, limits, errors;
and /generate's per-word probabilities."""

from __future__ import annotations

import asyncio
import math

import pytest

from service.metrics import REGISTRY
from service.scoring import ScoreRow

pytestmark = pytest.mark.numerics

TEXT = "the keys to the old cabinet are on the table"


async def _prob_after(client, model: str, tokens: list[str], word: str) -> float:
    """P(word | tokens) from /predict, over the whole vocabulary."""
    body = {"model": model, "text": " ".join(tokens), "top_k": 100}
    preds = (await client.post("/predict", json=body)).json()["predictions"]
    return next(p["prob"] for p in preds if p["word"] == word)


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
async def test_score_equals_predict_at_every_position(client, arch: str) -> None:
    r = await client.post("/score", json={"model": arch, "text": TEXT, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    tokens = body["tokens"]
    assert tokens == TEXT.split() and (body["model"], body["version"]) == (arch, 1)
    assert len(body["logprobs"]) == len(tokens) and body["logprobs"][0] is None
    assert len(body["top"]) == len(tokens) and body["top"][0] is None
    for t in range(1, len(tokens)):
        want = await _prob_after(client, arch, tokens[:t], tokens[t])
        assert abs(math.exp(body["logprobs"][t]) - want) < 1e-5, t
        prefix = {"model": arch, "text": " ".join(tokens[:t]), "top_k": 3}
        preds = (await client.post("/predict", json=prefix)).json()["predictions"]
        assert [p["word"] for p in body["top"][t]] == [p["word"] for p in preds]
        for a, b in zip(body["top"][t], preds, strict=True):
            assert abs(a["prob"] - b["prob"]) < 1e-5
    total = sum(body["logprobs"][1:])
    assert body["total_logprob"] == pytest.approx(total, rel=1e-9)
    assert body["perplexity"] == pytest.approx(math.exp(-total / (len(tokens) - 1)), rel=1e-9)


async def test_score_batch_equals_single_and_ragged_lengths(client) -> None:
    texts = [TEXT, "the clouds", "i grew up in france . i speak fluent french", "sky"]
    batch = (await client.post("/score", json={"texts": texts})).json()["results"]
    assert len(batch) == 4
    for text, res in zip(texts, batch, strict=True):
        one = (await client.post("/score", json={"text": text})).json()
        assert one["tokens"] == res["tokens"] and one.get("top") is None
        for a, b in zip(one["logprobs"][1:], res["logprobs"][1:], strict=True):
            assert abs(a - b) < 1e-5
    assert batch[3]["logprobs"] == [None] and batch[3]["perplexity"] is None
    assert batch[3]["total_logprob"] == 0


async def test_unknown_words_and_perplexity(client) -> None:
    # An unknown word reads as <unk> and is reported; the perplexity is what the per-word
    # numbers imply.
    r = (await client.post("/score", json={"text": "the xyzzy sky"})).json()
    assert r["unknown"] == ["xyzzy"] and r["tokens"] == ["the", "xyzzy", "sky"]
    want = math.exp(-(r["logprobs"][1] + r["logprobs"][2]) / 2)
    assert r["perplexity"] == pytest.approx(want)


async def test_concurrent_scores_share_one_forward_pass(make_client, tiny_store) -> None:
    from tests.service.conftest import make_settings

    client = await make_client(make_settings(tiny_store, max_batch_delay_ms=50))
    assert (await client.get("/readyz")).status_code == 200
    engine = client._transport.app.state.engine  # type: ignore[attr-defined]
    loaded = engine.resolve("gru")
    labels = {"model": "gru", "arch": "gru", "version": "1"}

    def passes() -> float:
        return REGISTRY.get_sample_value("gatehouse_batch_size_count", labels) or 0.0

    enc = [engine.encode(loaded, t) for t in (TEXT, "the clouds are", "i speak")]
    before = passes()
    results = await asyncio.gather(
        *(engine.score_rows(loaded, [ScoreRow(e.ids)]) for e in enc for _ in range(3))
    )
    assert passes() - before == 1  # nine requests, one batch
    assert [len(r[0].logprobs) for r in results] == [9, 9, 9, 2, 2, 2, 1, 1, 1]


@pytest.mark.parametrize(
    "req,status",
    [
        ({"text": ""}, 422),
        ({}, 422),
        ({"text": "a", "texts": ["b"]}, 422),
        ({"text": "a", "top_k": -1}, 422),
        ({"text": "a", "top_k": 101}, 422),
        ({"text": "a", "extra": 1}, 422),
        ({"texts": ["a"] * 65}, 413),
        ({"text": "a " * 2049}, 413),
        ({"model": "nope", "text": "a"}, 404),
    ],
)
async def test_score_errors(client, req: dict, status: int) -> None:
    r = await client.post("/score", json=req)
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and r.json()["message"]


async def test_score_is_documented_with_examples(client) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/score"]["post"]
    assert {"200", "404", "413", "422"} <= set(op["responses"])
    schema = spec["components"]["schemas"]["ScoreRequest"]
    assert (
        schema["examples"]
        and "perplexity" in spec["components"]["schemas"]["ScoreResponse"]["properties"]
    )


async def test_generate_reports_each_words_probability(client) -> None:
    greedy = {"model": "lstm", "text": "the clouds", "max_words": 4}
    out = (await client.post("/generate", json=greedy)).json()
    assert len(out["probs"]) == 4
    context = ["the", "clouds"]
    for word, prob in zip(out["words"], out["probs"], strict=True):
        assert abs(prob - await _prob_after(client, "lstm", context, word)) < 1e-5
        context.append(word)
    # Sampled at a high temperature from a narrow top-k: the probability reported is still
    # the model's own (temperature 1, whole vocabulary), so it matches /predict too.
    sampled = {**greedy, "temperature": 5.0, "top_k": 20, "seed": 11, "max_words": 3}
    out = (await client.post("/generate", json=sampled)).json()
    context = ["the", "clouds"]
    for word, prob in zip(out["words"], out["probs"], strict=True):
        assert abs(prob - await _prob_after(client, "lstm", context, word)) < 1e-5
        context.append(word)
