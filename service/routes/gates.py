"""GET and POST /gates: what every gate did on every token.

A large answer is streamed a block of rows at a time (`GateAnswer.chunks`), each block written
only once the client has taken the one before: a client that stops reading holds one block of
text and its answer's float32 values, and is dropped after `gate_send_timeout_s` without
progress. An answer under `WHOLE_BYTES` goes out whole, with a Content-Length, in one write.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from ..departure import WatchedRoute, client_gone
from ..deps import EngineDep, ReaderDep, SettingsDep
from ..errors import ApiError
from ..inference import GateQuery
from ..schemas.common import MODEL_REF_PATTERN
from ..schemas.gates import GatesRequest, GatesResponse
from .predict import ERRORS

log = logging.getLogger("gatehouse.gates")

router = APIRouter(tags=["inspection"], route_class=WatchedRoute)

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    200: {"model": GatesResponse, "description": "The gates, streamed as one JSON document"},
}


# Most answers (a sentence, the summary, a few units) are a few KB. Sent whole they are one
# write: a proxy receives all of it or, if the replica dies first, none, and then retries the
# request elsewhere; a stream cut by the death reaches the client truncated.
WHOLE_BYTES = 256 * 1024


class GateStream(StreamingResponse):
    """The JSON chunks, each encoded and sent once the client has taken the one before; an
    answer that ends within `WHOLE_BYTES` is sent as one body instead."""

    def __init__(self, chunks: Iterator[bytes], send_timeout_s: float) -> None:
        super().__init__(chunks, media_type="application/json")
        self.chunks = chunks
        self.send_timeout_s = send_timeout_s
        self.gone = client_gone()  # made in the handler; sent after it has returned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = self.gone
        head, rest = _first_bytes(self.chunks, WHOLE_BYTES)
        if rest is None:
            await self._send_whole(send, head)
            return
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        try:
            for chunk in itertools.chain((head,), rest):
                if gone is not None and gone.done():
                    return  # nobody reads the rest: stop encoding it
                message = {"type": "http.response.body", "body": chunk, "more_body": True}
                await asyncio.wait_for(send(message), self.send_timeout_s)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # Returning with the body incomplete makes the server close the connection, and
            # the answer's memory goes with this frame.
            log.warning("dropped a /gates client that read nothing for %ss", self.send_timeout_s)
        except OSError:  # the client went away mid-answer
            return
        if self.background is not None:
            await self.background()

    async def _send_whole(self, send: Send, body: bytes) -> None:
        headers = [*self.raw_headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if self.background is not None:
            await self.background()


def _first_bytes(chunks: Iterator[bytes], limit: int) -> tuple[bytes, Iterator[bytes] | None]:
    """The chunks joined until they pass `limit` bytes, with the iterator of the rest; the
    rest is None when every chunk fitted."""
    held: list[bytes] = []
    size = 0
    for chunk in chunks:
        held.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(held), chunks
    return b"".join(held), None


_INDEX_LIST = re.compile(r"^\d{1,6}(-\d{1,6})?(,\d{1,6}(-\d{1,6})?){0,4095}$")


def parse_indices(raw: str | None, what: str, limit: int = 65536) -> list[int] | None:
    """`"0,3,8-11"` -> [0, 3, 8, 9, 10, 11]; a query-string friendly list with ranges."""
    if raw is None or raw == "":
        return None
    if not _INDEX_LIST.match(raw):
        raise ApiError(422, f"{what}: expected comma-separated indices or ranges like 0,3,8-11")
    out: list[int] = []
    for part in raw.split(","):
        lo, _, hi = part.partition("-")
        a, b = int(lo), int(hi or lo)
        if b < a or len(out) + b - a + 1 > limit:
            raise ApiError(422, f"{what}: bad or too large range {part!r}")
        out.extend(range(a, b + 1))
    return out


async def _gates(engine: EngineDep, body: GatesRequest, timeout_s: float) -> GateStream:
    query = GateQuery(body.top_k, body.layers, body.units, body.round, body.summary_only)
    answer = await engine.gates(body.model, body.text, query)
    return GateStream(answer.chunks(), timeout_s)


@router.post(
    "/gates",
    response_model=None,
    summary="Per-token gate activations (JSON body)",
    responses=RESPONSES,
)
async def post_gates(
    body: GatesRequest, engine: EngineDep, settings: SettingsDep, _: ReaderDep
) -> GateStream:
    return await _gates(engine, body, settings.gate_send_timeout_s)


@router.get(
    "/gates",
    response_model=None,
    summary="Per-token gate activations (query string)",
    responses=RESPONSES,
)
async def get_gates(
    engine: EngineDep,
    settings: SettingsDep,
    _: ReaderDep,
    text: Annotated[str, Query(examples=["i grew up in france"])],
    model: Annotated[str | None, Query(pattern=MODEL_REF_PATTERN, examples=["lstm"])] = None,
    top_k: Annotated[int, Query(ge=1)] = 5,
    layers: Annotated[str | None, Query(description="e.g. 0,1", examples=["0"])] = None,
    units: Annotated[str | None, Query(description="e.g. 0-15,40", examples=["0-7"])] = None,
    round: Annotated[int | None, Query(ge=0, le=8)] = None,
    summary_only: bool = False,
) -> GateStream:
    try:
        body = GatesRequest(
            text=text,
            model=model,
            top_k=top_k,
            layers=parse_indices(layers, "layers"),
            units=parse_indices(units, "units"),
            round=round,
            summary_only=summary_only,
        )
    except ValidationError as e:  # same 422 shape as a bad JSON body
        raise RequestValidationError(e.errors()) from e
    return await _gates(engine, body, settings.gate_send_timeout_s)
