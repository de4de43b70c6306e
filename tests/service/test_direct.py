"""The direct lane answers exactly what the FastAPI route it stands in for answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service import direct
from service.app import create_app
from service.auth import require_reader
from service.errors import ApiError
from service.routes import openai, predict
from service.settings import Settings
from tests.service.conftest import make_settings

KEY = "k" * 24

VALID = [
    ("/predict", {"model": "lstm", "text": "i grew up in france . i speak fluent", "top_k": 3}),
    ("/predict", {"model": "gru", "texts": ["the keys to the", "the clouds are"], "top_k": 2}),
    ("/predict", {"text": "the clouds", "temperature": 0.5}),
    ("/score", {"model": "rnn", "text": "the clouds are in the sky"}),
    ("/score", {"model": "lstm", "texts": ["a b c", "the sky"], "top_k": 2}),
    ("/v1/completions", {"model": "lstm", "prompt": "the clouds are", "max_tokens": 4, "seed": 1}),
    ("/v1/completions", {"model": "gru", "prompt": ["a", "b c"], "max_tokens": 2, "seed": 3}),
]

REFUSED = [
    ("/predict", b'{"text": "the cl'),  # truncated JSON
    ("/predict", b"\xff\xfe{}"),  # not UTF-8
    ("/predict", b""),
    ("/predict", b"null"),
    ("/predict", b"[1, 2]"),
    ("/predict", b'"a text"'),
    ("/predict", b"[" * 5000),  # deeper than the JSON parser goes
    ("/predict", b'{"text": 5}'),
    ("/predict", b'{"text": "a", "texts": ["b"]}'),
    ("/predict", b'{"text": "a", "top_k": 0}'),
    ("/predict", b'{"text": "a", "top_k": NaN}'),
    ("/predict", b'{"text": "a", "temperature": 1e999}'),
    ("/predict", b'{"model": "nope", "text": "a"}'),  # valid body, unknown model
    ("/predict", b'{"model": "lstm", "texts": []}'),
    ("/score", b'{"text": ""}'),
    ("/score", b'{"model": "lstm"}'),
    ("/v1/completions", b'{"model": "lstm"}'),
    ("/v1/completions", b'{"model": "lstm", "prompt": "a", "max_tokens": -1}'),
    ("/v1/completions", b'{"model": "nope", "prompt": "a"}'),
    ("/v1/completions", b'{"prompt": "a",'),
]


@pytest.fixture
async def pair(tiny_store: Path) -> AsyncIterator[Callable[..., Any]]:
    """`make(**settings)` -> (client with the lane, client of the same app without it)."""
    opened: list[tuple[Any, httpx.AsyncClient]] = []

    async def open_app(app: FastAPI) -> httpx.AsyncClient:
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        opened.append((lifespan, client))
        return client

    async def make(**overrides: object) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        settings: Settings = make_settings(tiny_store, **overrides)
        with_lane = create_app(settings)
        without = create_app(settings)
        without.router.routes[:] = [
            r for r in without.router.routes if not isinstance(r, direct.DirectRoutes)
        ]
        return await open_app(with_lane), await open_app(without)

    yield make
    for lifespan, client in reversed(opened):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def counting_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths whose request the lane handed to the FastAPI route."""
    handed: list[str] = []
    original = direct._Lane.__call__

    async def call(self: direct._Lane, scope: Any, receive: Any, send: Any) -> None:
        route_handle = self.route.handle

        async def handle(scope: Any, receive: Any, send: Any) -> None:
            handed.append(scope["path"])
            await route_handle(scope, receive, send)

        self.route.handle = handle  # type: ignore[method-assign]
        try:
            await original(self, scope, receive, send)
        finally:
            del self.route.handle

    monkeypatch.setattr(direct._Lane, "__call__", call)
    return handed


def same_but_id(a: dict[str, Any], b: dict[str, Any]) -> bool:
    assert a["id"] != b["id"]
    return {**a, "id": "", "created": 0} == {**b, "id": "", "created": 0}


@pytest.mark.parametrize(("path", "body"), VALID)
async def test_a_valid_request_takes_the_lane_and_gets_the_routes_exact_bytes(
    pair: Any, monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, Any]
) -> None:
    lane, plain = await pair()
    handed = counting_fallbacks(monkeypatch)
    a = await lane.post(path, json=body)
    b = await plain.post(path, json=body)
    assert a.status_code == b.status_code == 200
    if path.startswith("/v1"):  # each completion has its own id and creation time
        assert same_but_id(a.json(), b.json())
    else:
        assert a.content == b.content
    assert a.headers["content-type"] == b.headers["content-type"]
    assert a.headers["content-length"] == str(len(a.content))
    assert handed == []


@pytest.mark.parametrize(("path", "body"), REFUSED)
async def test_a_refused_request_gets_the_routes_exact_answer(
    pair: Any, path: str, body: bytes
) -> None:
    lane, plain = await pair()
    headers = {"content-type": "application/json"}
    a = await lane.post(path, content=body, headers=headers)
    b = await plain.post(path, content=body, headers=headers)
    assert 400 <= a.status_code < 500
    assert (a.status_code, a.json()) == (b.status_code, b.json())


async def test_a_request_the_lane_cannot_validate_is_replayed_to_the_route(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, _ = await pair()
    handed = counting_fallbacks(monkeypatch)
    r = await lane.post(
        "/predict", content=b'{"text": 5}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert handed == ["/predict"]


async def test_the_key_is_checked_on_the_lane_as_on_the_route(pair: Any) -> None:
    lane, plain = await pair(api_key=KEY, protect_inference=True)
    body = {"model": "lstm", "text": "the clouds are"}
    for client in (lane, plain):
        missing = await client.post("/predict", json=body)
        wrong = await client.post("/predict", json=body, headers={"authorization": "Bearer x"})
        ok = await client.post("/predict", json=body, headers={"authorization": f"Bearer {KEY}"})
        assert (missing.status_code, wrong.status_code, ok.status_code) == (401, 401, 200)
    a = await lane.post("/predict", json=body)
    b = await plain.post("/predict", json=body)
    assert a.json() == b.json()
    assert a.headers.get("www-authenticate") == b.headers.get("www-authenticate")


async def test_a_json_content_type_with_parameters_takes_the_lane(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lane, plain = await pair()
    handed = counting_fallbacks(monkeypatch)
    headers = {"content-type": "Application/JSON; charset=utf-8"}
    body = b'{"model": "lstm", "text": "the clouds are"}'
    a = await lane.post("/predict", content=body, headers=headers)
    b = await plain.post("/predict", content=body, headers=headers)
    assert a.status_code == 200 and a.content == b.content
    assert handed == []


async def test_dependency_overrides_apply_on_the_lane(pair: Any) -> None:
    lane, _ = await pair()

    async def closed(_: Any) -> None:
        raise ApiError(403, "closed for the test")

    app = lane._transport.app  # type: ignore[attr-defined]
    app.dependency_overrides[require_reader] = closed
    r = await lane.post("/predict", json={"text": "the clouds"})
    assert r.status_code == 403
    assert r.json()["message"] == "closed for the test"


async def test_the_lane_is_labelled_with_the_routes_template(pair: Any) -> None:
    lane, _ = await pair()
    assert (await lane.post("/predict", json={"text": "the clouds"})).status_code == 200
    metrics = (await lane.get("/metrics")).text
    assert 'route="/predict"' in metrics


def test_a_route_with_more_than_a_body_cannot_take_the_lane() -> None:
    by_path = {r.path: r for r in openai.router.routes}
    with pytest.raises(ValueError, match="cannot take the direct lane"):
        direct.DirectRoutes([by_path["/v1/models/{model}"]])
    generate = next(r for r in predict.router.routes if r.path == "/generate")
    assert not direct.eligible(generate)  # it reads the Accept header through the request
    app = create_app(Settings(no_bootstrap=True))
    with pytest.raises(ValueError, match="no POST route"):
        direct.install(app, (predict.router,), ("/nowhere",))
