"""The page itself: `/` and `/ui/<view>` answer the one HTML file; `/ui/static/...` its assets.

Only files present in the package at import time are served (a fixed table, no path joined
from the request), so nothing outside `static/` can be reached.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from models.builtin import BUILTIN_CORPORA, COUNTRIES, FILLERS, long_range_prefix

from ..errors import ApiError

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
VIEWS = ("predict", "gates", "longrange", "train", "models", "compare")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# The page's files change with the package: revalidate each load rather than cache stale JS.
_NO_STALE = {"Cache-Control": "no-cache"}
# The page may load and call nothing but this server; the browser enforces it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'self'"
)
_PAGE_HEADERS = {**_NO_STALE, "Content-Security-Policy": PAGE_CSP}
MAX_GAP = 6


def _table() -> dict[str, Path]:
    return {
        p.relative_to(STATIC).as_posix(): p
        for p in STATIC.rglob("*")
        if p.is_file() and p.suffix in _TYPES
    }


_FILES = _table()


@cache
def _read(rel: str) -> bytes:
    return _FILES[rel].read_bytes()


def long_range_prompts(max_gap: int = MAX_GAP) -> list[dict[str, Any]]:
    """Per gap (filler sentences between country and "i speak fluent"), one prompt a country.

    The fillers rotate with the country and the gap, so no gap is a single repeated sentence.
    """
    out = []
    for gap in range(max_gap + 1):
        prompts = []
        for i, (country, language) in enumerate(COUNTRIES):
            fillers = [FILLERS[(i * 3 + gap * 5 + k) % len(FILLERS)] for k in range(gap)]
            text = long_range_prefix(country, fillers)
            prompts.append({"text": text, "country": country, "language": language})
        out.append({"gap": gap, "prompts": prompts})
    return out


@router.get("/")
async def index() -> HTMLResponse:
    return HTMLResponse(_read("index.html"), headers=_PAGE_HEADERS)


@router.get("/ui")
@router.get("/ui/")
async def ui_index() -> HTMLResponse:
    return HTMLResponse(_read("index.html"), headers=_PAGE_HEADERS)


@router.get("/ui/config.json")
async def ui_config() -> dict[str, Any]:
    """What the page needs besides the API: built-in corpora and the long-range prompts."""
    return {
        "builtins": sorted(BUILTIN_CORPORA),
        "long_range": long_range_prompts(),
        "countries": [{"country": c, "language": lang} for c, lang in COUNTRIES],
    }


@router.get("/ui/static/{rel:path}")
async def static(rel: str) -> Response:
    if rel not in _FILES:
        raise ApiError(404, f"no such file {rel!r}")
    media = _TYPES[_FILES[rel].suffix]
    return Response(_read(rel), media_type=media, headers=_NO_STALE)


@router.get("/ui/{view}")
async def ui_view(view: str) -> HTMLResponse:
    if view not in VIEWS:
        raise ApiError(404, f"no page {view!r}; pages: {', '.join(VIEWS)}")
    return HTMLResponse(_read("index.html"), headers=_PAGE_HEADERS)
