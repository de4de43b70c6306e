"""The OpenAI-compatible API: GET /v1/models, GET /v1/models/{model}, POST /v1/completions.

No `/v1/chat/completions`: a word-level language model has no chat template to apply.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from models.store import LoadedModel

from ..auth import require_reader
from ..departure import WatchedRoute
from ..deps import EngineDep, RegistryDep
from ..errors import JSONResponse
from ..openai.completions import complete, prepare, stream
from ..schemas.openai import Completion, CompletionRequest, ModelCard, ModelCardList, OpenAIError

router = APIRouter(
    prefix="/v1", tags=["openai"], dependencies=[Depends(require_reader)], route_class=WatchedRoute
)

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIError, "description": "Invalid or unsupported request field"},
    401: {"model": OpenAIError, "description": "Missing or wrong API key"},
    404: {"model": OpenAIError, "description": "Unknown model (code model_not_found)"},
    413: {"model": OpenAIError, "description": "Over a size limit"},
    415: {"model": OpenAIError, "description": "Body is not application/json"},
    503: {"model": OpenAIError, "description": "No model loaded yet, or overloaded"},
}


def _card(loaded: LoadedModel) -> ModelCard:
    created = 0
    stamp = loaded.meta.get("created_at")
    if isinstance(stamp, str):
        try:
            parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
            created = int(parsed.replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            pass  # a hand-written meta.json: the card still lists the model
    return ModelCard(id=loaded.name, created=created)


# Completions first: FastAPI tries routes in order, and this is the one under load.
@router.post(
    "/completions",
    response_model=Completion,
    summary="OpenAI-compatible text completion (stream: Server-Sent Events, then [DONE])",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def completions(
    body: CompletionRequest, engine: EngineDep
) -> JSONResponse | StreamingResponse:  # the key: the router's require_reader
    plan = prepare(engine, body)
    if body.stream:
        return StreamingResponse(
            stream(engine, plan),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    # A response, not a model: FastAPI would validate the whole answer again (`Completion`
    # documents it; tests/service/test_openai.py checks it through the SDK's own types).
    return JSONResponse(await complete(engine, plan))


@router.get("/models", response_model=ModelCardList, summary="Served models (OpenAI shape)")
async def list_models(registry: RegistryDep) -> ModelCardList:
    return ModelCardList(data=[_card(m) for m in registry.loaded()])


@router.get(
    "/models/{model}", response_model=ModelCard, summary="One served model", responses=ERRORS
)
async def get_model(model: str, engine: EngineDep) -> ModelCard:
    return _card(engine.resolve(model))
