"""The page's server side, in process: files, offline docs, gate pictures, CORS, settings."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.settings_load import parse_args
from service.ui import render
from tests.service.conftest import make_settings

TEXT = "i grew up in france . i speak fluent"


def decode_png(data: bytes) -> np.ndarray:
    """RGB8, filter-0 PNGs (what render.encode_png writes) -> [rows, cols, 3]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        assert crc == zlib.crc32(tag + body)
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02"  # 8-bit RGB
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    assert size is not None
    cols, rows = size
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(rows, cols * 3 + 1)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(rows, cols, 3)


async def test_page_and_assets(client: httpx.AsyncClient) -> None:
    for path in ("/", "/ui", "/ui/gates", "/ui/longrange"):
        r = await client.get(path)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert '<script type="module" src="/ui/static/js/main.js">' in r.text
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    js = await client.get("/ui/static/js/heatmap.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for bad in ("/ui/static/../pages.py", "/ui/static/%2e%2e/pages.py", "/ui/static/nope.js"):
        r = await client.get(bad)
        assert r.status_code == 404 and r.json()["message"]
    r = await client.get("/ui/nowhere")
    assert r.status_code == 404 and "pages:" in r.json()["message"]


async def test_every_asset_the_page_names_is_served(client: httpx.AsyncClient) -> None:
    static = Path(__file__).resolve().parents[2] / "service" / "ui" / "static"
    for path in static.rglob("*.js"):
        for line in path.read_text().splitlines():
            if line.startswith("import") and "./" in line:
                name = line.split('"./')[1].split('"')[0]
                r = await client.get(f"/ui/static/js/{name}")
                assert r.status_code == 200, (path.name, name)


async def test_docs_use_local_assets_only(client: httpx.AsyncClient) -> None:
    for path in ("/docs", "/redoc"):
        r = await client.get(path)
        assert "http://" not in r.text and "https://" not in r.text, r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = await client.get(f"/ui/vendor/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000
    assert (await client.get("/ui/vendor/core.py")).status_code == 404


async def test_config_prompts(client: httpx.AsyncClient) -> None:
    cfg = (await client.get("/ui/config.json")).json()
    assert "longrange" in cfg["builtins"]
    for entry in cfg["long_range"]:
        for p in entry["prompts"]:
            assert p["text"].startswith(f"i grew up in {p['country']} .")
            assert p["text"].endswith("i speak fluent")
            assert p["text"].count(" . ") == entry["gap"] + 1  # the country's, one a filler


async def test_png_pixels_are_the_gate_values(client: httpx.AsyncClient) -> None:
    params = {"model": "lstm", "text": TEXT, "layers": "1", "units": "2-9"}
    gates = (await client.get("/gates", params=params)).json()
    r = await client.get("/gates.png", params={**params, "gates": "forget,cell"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = decode_png(r.content)
    tokens, units = len(gates["tokens"]), 8
    sx, sy = render.cell_size(tokens, units)
    assert img.shape == (2 * units * sy + 8, tokens * sx, 3)
    forget = np.array(gates["layers"][0]["gates"]["forget"])
    for t, u in ((0, 0), (3, 5), (tokens - 1, units - 1)):
        want = render.colour(forget[t : t + 1, u : u + 1], "forget", 0.0, 1.0)[0, 0]
        assert (img[u * sy, t * sx] == want).all()
    cell = np.array(gates["layers"][0]["gates"]["cell"])
    lo, hi = render.scale_of("cell", cell)
    assert lo == -hi and hi > 0
    top = units * sy + 8  # the cell panel starts below the forget panel and the gap
    want = render.colour(cell[2:3, 4:5], "cell", lo, hi)[0, 0]
    assert (img[top + 4 * sy, 2 * sx] == want).all()


async def test_svg_is_labelled_xml(client: httpx.AsyncClient) -> None:
    params = {"model": "gru", "text": TEXT, "gates": "update", "units": "3-12"}
    r = await client.get("/gates.svg", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(r.text)
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any("update" in t and "layer 1" in t for t in texts)
    assert "3" in texts and "12" in texts  # the first and last unit shown, not row numbers
    assert "france" in texts and "fluent" in texts
    images = list(root.iter("{http://www.w3.org/2000/svg}image"))
    assert len(images) == 2  # two layers, one gate each


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"model": "lstm", "text": TEXT, "gates": "update"}, 422),  # not an LSTM gate
        ({"model": "lstm", "text": TEXT, "gates": "forget;cell"}, 422),
        ({"model": "lstm", "text": TEXT, "gates": "nope"}, 422),
        ({"model": "lstm", "text": TEXT, "layers": "7"}, 422),
        ({"model": "lstm", "text": TEXT, "units": "0-99999"}, 422),
        ({"model": "nope", "text": TEXT}, 404),
        ({"model": "lstm", "text": "   "}, 422),
        ({"model": "lstm", "text": "the sky " * 400}, 413),
        ({"text": TEXT, "model": "LSTM!"}, 422),
    ],
)
@pytest.mark.parametrize("kind", ["png", "svg"])
async def test_picture_bad_input_is_4xx_json(
    client: httpx.AsyncClient, params: dict[str, str], status: int, kind: str
) -> None:
    r = await client.get(f"/gates.{kind}", params=params)
    assert r.status_code == status, r.text
    assert r.json()["message"]


async def test_pictures_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/gates.png" in paths and "/gates.svg" in paths
    assert not any(p.startswith("/ui") for p in paths) and "/docs" not in paths


async def test_versions_carry_their_training_curve(client: httpx.AsyncClient) -> None:
    body = (await client.get("/models/lstm")).json()
    assert all(isinstance(v["history"], list) for v in body["versions"])


def test_cors_flag() -> None:
    s = parse_args(["--cors-origins", "http://a.test:3000, http://b.test/"])
    assert s.cors_origin_list == ["http://a.test:3000", "http://b.test"]
    assert parse_args([]).cors_origin_list == []


async def test_cors_off_by_default(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"origin": "http://elsewhere.test"})
    assert "access-control-allow-origin" not in r.headers


async def test_cors_allows_the_configured_origin_only(make_client, tiny_store: Path) -> None:
    client = await make_client(make_settings(tiny_store, cors_origins="http://a.test:3000"))
    pre = await client.options(
        "/predict",
        headers={
            "origin": "http://a.test:3000",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type,authorization",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://a.test:3000"
    ok = await client.post(
        "/predict", json={"text": TEXT}, headers={"origin": "http://a.test:3000"}
    )
    assert ok.headers["access-control-allow-origin"] == "http://a.test:3000"
    # Error answers carry the header too, or a page elsewhere could not read the message.
    bad = await client.post(
        "/predict", json={"text": TEXT, "model": "nope"}, headers={"origin": "http://a.test:3000"}
    )
    assert bad.status_code == 404 and bad.headers["access-control-allow-origin"]
    other = await client.get("/healthz", headers={"origin": "http://b.test"})
    assert "access-control-allow-origin" not in other.headers
