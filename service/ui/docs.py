"""`/docs` (Swagger UI) and `/redoc`, with their assets served from a declared dependency.

FastAPI's defaults point the browser at a CDN, which leaves a blank page on a machine
without internet. The `fastapi-offline` distribution ships the Swagger UI and ReDoc bundles;
only its static files are used, read from the installed package.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from ..errors import ApiError

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_PREFIX = "/ui/vendor/"
# The browser itself refuses any other origin: ReDoc's sidebar shows a logo from its vendor's
# CDN, which no option turns off; blocked, the image hides itself. The bundles need inline
# styles, Swagger UI's start-up is an inline script, and ReDoc runs a worker from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'self'"
)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@cache
def _asset(name: str) -> bytes:
    return Path(str(files("fastapi_offline") / "static" / name)).read_bytes()


@router.get(_PREFIX + "{name}")
async def vendor_asset(name: str) -> Response:
    if name not in _ASSETS:
        raise ApiError(404, f"no such asset {name!r}")
    return Response(
        _asset(name),
        media_type=_ASSETS[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("/docs")
async def swagger() -> HTMLResponse:
    return _with_csp(
        get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Gatehouse API",
            swagger_js_url=_PREFIX + "swagger-ui-bundle.js",
            swagger_css_url=_PREFIX + "swagger-ui.css",
            swagger_favicon_url=_PREFIX + "favicon.png",
            # The default validator is a remote service: its badge would be a request elsewhere.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return _with_csp(
        get_redoc_html(
            openapi_url="/openapi.json",
            title="Gatehouse API",
            redoc_js_url=_PREFIX + "redoc.standalone.js",
            redoc_favicon_url=_PREFIX + "favicon.png",
            with_google_fonts=False,
        )
    )
