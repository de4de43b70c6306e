"""Broken weights in the store, over a real server: refused at load, reported, never served,
and never silently replaced by another model."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import torch

from models import store
from models.lm import RNNLM, ModelConfig
from tests.helpers import save_tiny_model, tiny_tokenizer


def save_poisoned(model_dir: Path, name: str, arch: str, value: float) -> int:
    """A real version whose weights hold `value` (NaN or infinity) in one place."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(arch, len(tok.vocab), 8, 8, 1, dropout=0.0, tied=False)).eval()
    with torch.no_grad():
        model.decoder.weight[3, 2] = value
    return store.save_version(model_dir, name, model, tok, {"metrics": {}})


def test_non_finite_and_broken_weights_are_refused_and_reported(
    tmp_path: Path, server_factory
) -> None:
    model_dir = tmp_path / "models"
    assert save_poisoned(model_dir, "lstm", "lstm", math.nan) == 1  # the default model
    save_tiny_model(model_dir, "gru", "gru")
    assert save_poisoned(model_dir, "gru", "gru", math.inf) == 2  # newer, broken: v1 serves
    save_tiny_model(model_dir, "torn", "rnn")
    weights = model_dir / "torn" / "1" / store.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])

    server = server_factory(model_dir, "--no-bootstrap", "--default-model", "lstm")
    server.wait_ready()
    messages: list[str] = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        # No model named: the default's failure, not another model's answer.
        r = c.post("/predict", json={"text": "the sky"})
        assert r.status_code == 503, r.text
        body = r.json()
        messages.append(body["message"])
        assert "default model 'lstm' failed to load" in body["message"]
        assert "non-finite" in body["message"] and "decoder.weight" in body["message"]
        r = c.post("/generate", json={"text": "the", "max_words": 3, "temperature": 1, "seed": 1})
        assert r.status_code == 503 and "'lstm' failed to load" in r.json()["message"]

        # Named: says it failed to load, not that it is unknown.
        for name in ("lstm", "torn"):
            r = c.post("/predict", json={"model": name, "text": "the sky"})
            assert r.status_code == 503, r.text
            messages.append(r.json()["message"])
            assert f"model {name!r} failed to load" in r.json()["message"]
            detail = c.get(f"/models/{name}")
            assert detail.status_code == 503
            messages.append(detail.text)
            assert [v["version"] for v in detail.json()["detail"]] == [1]
        assert "the weights file of torn v1" in c.get("/models/torn").json()["detail"][0]["error"]
        assert c.post("/predict", json={"model": "nope", "text": "a"}).status_code == 404

        listed = c.get("/models").json()
        assert {m["name"] for m in listed["models"]} == {"gru"}
        assert {f["name"] for f in listed["failed"]} == {"lstm", "torn"}
        messages.append(str(listed))

        # The newer broken version is skipped and listed; the older one serves, finite.
        r = c.post("/predict", json={"model": "gru", "text": "the sky"})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert all(p["prob"] is not None for p in r.json()["predictions"])
        versions = c.get("/models/gru").json()["versions"]
        assert [v["version"] for v in versions] == [1, 2]
        assert versions[0]["error"] is None and "non-finite" in versions[1]["error"]
        messages.append(str(versions))
        sampled = c.post(
            "/generate",
            json={"model": "gru", "text": "the", "max_words": 3, "temperature": 1, "seed": 1},
        )
        assert sampled.status_code == 200, sampled.text
        r = c.post("/predict", json={"model": "gru@2", "text": "the sky"})
        assert r.status_code == 503 and "gru@2 failed to load" in r.json()["message"]
        messages.append(r.text)

    for message in messages:  # what broke, never where it lives on the host
        assert str(tmp_path) not in message and "/models/" not in message, message
