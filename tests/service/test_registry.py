"""Hot pick-up of new versions and skipping of broken ones, without a restart."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from models import store
from tests.helpers import save_tiny_model
from tests.service.conftest import make_settings


async def _wait_for(fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await fn()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


async def test_new_version_is_served_without_restart(make_client, tiny_store, tmp_path) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    c = await make_client(make_settings(model_dir, reload_interval_s=0.1))
    before = (await c.post("/predict", json={"model": "gru", "text": "the sky"})).json()
    assert before["version"] == 1
    assert save_tiny_model(model_dir, "gru", "gru", seed=5) == 2

    async def served_v2() -> bool:
        r = await c.post("/predict", json={"model": "gru", "text": "the sky"})
        return r.json()["version"] == 2

    assert await _wait_for(served_v2)
    after = (await c.post("/predict", json={"model": "gru", "text": "the sky"})).json()
    assert after["predictions"] != before["predictions"]
    pinned = (await c.post("/predict", json={"model": "gru@1", "text": "the sky"})).json()
    assert pinned["predictions"] == before["predictions"]
    versions = (await c.get("/models/gru")).json()["versions"]
    assert [(v["version"], v["loaded"]) for v in versions] == [(1, False), (2, True)]
    # A brand-new name appears too.
    save_tiny_model(model_dir, "fresh", "rnn")

    async def listed() -> bool:
        return "fresh" in {m["name"] for m in (await c.get("/models")).json()["models"]}

    assert await _wait_for(listed)


def _corrupt(version_dir: Path, what: str) -> None:
    if what == "meta":
        (version_dir / store.META_FILE).write_text("{not json")
    elif what == "weights":
        data = (version_dir / store.WEIGHTS_FILE).read_bytes()
        (version_dir / store.WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    else:
        (version_dir / store.VOCAB_FILE).unlink()


async def test_broken_versions_are_skipped(make_client, tiny_store, tmp_path, caplog) -> None:
    model_dir = tmp_path / "models"
    shutil.copytree(tiny_store, model_dir)
    for what in ("meta", "weights", "vocab"):
        v = save_tiny_model(model_dir, "lstm", "lstm", seed=9)
        _corrupt(model_dir / "lstm" / str(v), what)
    only_broken = save_tiny_model(model_dir, "broken", "gru")
    _corrupt(model_dir / "broken" / str(only_broken), "weights")
    c = await make_client(make_settings(model_dir))
    # The newest loadable version serves; the others keep serving; nothing failed the start.
    r = await c.post("/predict", json={"model": "lstm", "text": "the sky"})
    assert r.status_code == 200 and r.json()["version"] == 1
    names = {m["name"] for m in (await c.get("/models")).json()["models"]}
    assert names == {"rnn", "lstm", "gru"}
    refused = await c.post("/predict", json={"model": "broken", "text": "a"})
    assert refused.status_code == 503 and "'broken' failed to load" in refused.json()["message"]
    versions = (await c.get("/models/lstm")).json()["versions"]
    assert [v["error"] is not None for v in versions] == [False, True, True, True]
    assert (await c.post("/predict", json={"model": "lstm@3", "text": "a"})).status_code == 503
    assert "skipping broken model version lstm@2" in caplog.text
