"""`POST /generate` over the word loop: checks, n samples run together, the answer or its
Server-Sent Events.

Every word of every sample is one `Step` through the engine's batcher (`generation.py`), so
the n samples of one request share forward passes with each other and with everything else
queued. A stream that its client closes is cancelled at its next await: no further step is
queued for any of its samples.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from models.store import LoadedModel
from models.tokenizer import Encoded

from .errors import ApiError, error_body
from .generation import Sampling, Word, merged, together
from .schemas.common import Prediction
from .schemas.predict import GenerateRequest, GenerateResponse, Sample

if TYPE_CHECKING:
    from .inference import InferenceEngine


@dataclass(slots=True)
class GeneratePlan:
    """A checked request: the model, the encoded text, one `Sampling` per sample."""

    req: GenerateRequest
    loaded: LoadedModel
    enc: Encoded
    samplings: list[Sampling]


def plan(engine: InferenceEngine, req: GenerateRequest) -> GeneratePlan:
    settings = engine.settings
    engine.check_max_words(req.max_words)
    for k in (req.top_k, req.alternatives):
        if k:
            engine.check_top_k(k)
    if req.n > settings.max_texts:
        raise ApiError(422, f"n {req.n} over the limit of {settings.max_texts} (max_texts)")
    loaded = engine.resolve(req.model)
    enc = engine.encode(loaded, req.text)
    stops = []
    for stop in req.stop or []:
        ids = loaded.tokenizer.encode(stop).ids
        if not ids:
            raise ApiError(422, f"stop sequence {stop!r} has no words")
        stops.append(tuple(ids))
    samplings = [
        Sampling(
            req.max_words,
            req.temperature,
            req.top_k,
            req.top_p,
            None if req.seed is None else (req.seed + j) % 2**63,
            tuple(stops),
            req.alternatives,
        )
        for j in range(req.n)
    ]
    return GeneratePlan(req, loaded, enc, samplings)


def _sample(req: GenerateRequest, words: list[Word], finish_reason: str) -> Sample:
    names = [w.word for w in words]
    continued = " ".join([req.text.rstrip(), *names]).replace(" <eos> ", "\n").strip(" ")
    return Sample(
        text=continued,
        words=names,
        probs=[math.exp(w.logprob) for w in words],
        finish_reason=finish_reason,  # type: ignore[arg-type]
        alternatives=[_alternatives(w) for w in words] if req.alternatives else None,
    )


def _alternatives(word: Word) -> list[Prediction]:
    return [Prediction(word=w, prob=math.exp(lp)) for w, lp in word.top]


async def run(engine: InferenceEngine, p: GeneratePlan) -> GenerateResponse:
    async def one(sampling: Sampling) -> Sample:
        generation = engine.generation(p.loaded, p.enc, sampling)
        words = [w async for w in generation]
        return _sample(p.req, words, generation.finish_reason)

    samples = await together([one(s) for s in p.samplings])
    return GenerateResponse(
        **samples[0].model_dump(),
        model=p.loaded.name,
        version=p.loaded.version,
        arch=p.loaded.config.arch,
        unknown=p.enc.unknown,
        samples=samples if len(samples) > 1 else None,
    )


def _event(kind: str, payload: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def events(engine: InferenceEngine, p: GeneratePlan) -> AsyncIterator[bytes]:
    """`word` events ({"sample", "word", "prob", "alternatives"?}) as each word is chosen,
    a `done` event per sample (the whole sample, its finish reason), `error` if one fails."""

    async def one(j: int, sampling: Sampling) -> AsyncIterator[bytes]:
        generation = engine.generation(p.loaded, p.enc, sampling)
        words: list[Word] = []
        async for word in generation:
            words.append(word)
            payload: dict[str, object] = {
                "sample": j,
                "word": word.word,
                "prob": math.exp(word.logprob),
            }
            if p.req.alternatives:
                payload["alternatives"] = [a.model_dump() for a in _alternatives(word)]
            yield _event("word", payload)
        done = _sample(p.req, words, generation.finish_reason).model_dump(exclude_none=True)
        yield _event("done", {"sample": j, **done})

    try:
        async for chunk in merged([one(j, s) for j, s in enumerate(p.samplings)]):
            yield chunk
    except ApiError as e:  # the status line is long sent: the error goes in the stream
        yield _event("error", error_body(e.status, e.message))
