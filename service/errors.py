"""One error shape for every non-2xx answer: `{"status", "error", "message"}` (+ `detail`)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response

log = logging.getLogger("gatehouse.errors")


class JSONResponse(StarletteJSONResponse):
    """orjson-encoded JSON: several times faster than the stdlib encoder on float lists.

    A JSONResponse subclass, so FastAPI documents JSON schemas for routes that return it.
    """

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class ApiError(Exception):
    """Raised anywhere below the routes; becomes a JSON error response with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        detail: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.detail = detail


def error_body(status: int, message: str, detail: Any = None) -> dict[str, Any]:
    try:
        kind = HTTPStatus(status).phrase.lower().replace(" ", "_")
    except ValueError:
        kind = "error"
    body: dict[str, Any] = {"status": status, "error": kind, "message": message}
    if detail is not None:
        body["detail"] = detail
    return body


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, detail: Any = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, detail), status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def _jsonable_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # pydantic puts the offending input and exception objects in its errors: neither is
    # always JSON-encodable (NaN, bytes, ValueError), and echoing big inputs back is wasteful.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors[:20]
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.headers, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        return error_response(422, _validation_message(errors), detail=_jsonable_errors(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error: the server logged the details")
