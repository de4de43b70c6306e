"""`POST /v1/completions` over the engine: OpenAI's request in, the engine's word loop and
scoring underneath, OpenAI's answer (or its stream of chunks) out.

Nothing here runs the model: every word is a `Generation` step and every echoed prompt a
`ScoreRow`, through the engine's batcher, limits and metrics. Everything a request can get
wrong is checked in `prepare`, before a stream's first byte, so errors keep their status.

A word-level model's "token" is a word: each generated word is the piece " word" (a newline
for `<eos>`), so the pieces join to `text` and `usage` counts words. With `echo`, `text`
starts with the prompt as sent and its pieces are the words the tokenizer read in it
(lowercased where the model lowercases); `text_offset` points at each piece in `text`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from models.store import LoadedModel
from models.tokenizer import EOS, Encoded

from ..errors import ApiError
from ..generation import Sampling, Word, merged, together
from ..inference import InferenceEngine
from ..schemas.openai import NEUTRAL, CompletionRequest
from ..scoring import ScoreResult, ScoreRow
from .errors import openai_error

log = logging.getLogger("gatehouse.openai")
MAX_STOPS = 4  # OpenAI's own limit


def bad(param: str, message: str, status: int = 400) -> ApiError:
    """An invalid request naming the field at fault (OpenAI's `param`)."""
    return ApiError(status, message, detail={"param": param})


def piece(word: str) -> str:
    """How a word appears in a completion's text."""
    return "\n" if word == EOS else " " + word


@dataclass(slots=True)
class Plan:
    """A checked request: everything needed to answer it, nothing run yet."""

    req: CompletionRequest
    loaded: LoadedModel
    prompts: list[tuple[str, Encoded]]
    stops: tuple[tuple[int, ...], ...]
    id: str
    created: int

    def sampling(self, sample: int) -> Sampling:
        r = self.req
        return Sampling(
            max_words=r.max_tokens,
            temperature=1.0 if r.temperature is None else r.temperature,
            top_k=r.top_k if r.top_k is not None and r.top_k > 0 else None,
            top_p=r.top_p if r.top_p is not None and r.top_p < 1 else None,
            seed=None if r.seed is None else (r.seed + sample) % 2**63,
            stop=self.stops,
            alternatives=r.logprobs or 0,
        )


def prepare(engine: InferenceEngine, req: CompletionRequest) -> Plan:
    for name in sorted(req.model_extra or {}):
        raise bad(name, f"unrecognized request argument: {name}")
    for name, neutral in NEUTRAL.items():
        if getattr(req, name) not in neutral:
            raise bad(name, f"{name} is not supported by Gatehouse (a word-level RNN server)")
    settings = engine.settings
    texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not texts:
        raise bad("prompt", "prompt is an empty list")
    if len(texts) * req.n > settings.max_texts:
        raise bad("n", f"{len(texts)} prompts x n={req.n} over the limit of {settings.max_texts}")
    if req.max_tokens > settings.max_words:
        raise bad("max_tokens", f"max_tokens over the limit of {settings.max_words}")
    for name, value in (("logprobs", req.logprobs), ("top_k", req.top_k)):
        if value is not None and value > settings.max_top_k:
            raise bad(name, f"{name} {value} over the limit of {settings.max_top_k}")
    if req.temperature is not None and 0 < req.temperature < 0.01:
        raise bad("temperature", "temperature must be 0 (greedy) or from 0.01 to 100")
    loaded = engine.resolve(req.model)
    prompts = [(text, engine.encode(loaded, text)) for text in texts]
    return Plan(
        req, loaded, prompts, _stops(loaded, req.stop), f"cmpl-{uuid.uuid4().hex}", int(time.time())
    )


def _stops(loaded: LoadedModel, stop: str | list[str] | None) -> tuple[tuple[int, ...], ...]:
    stops = [stop] if isinstance(stop, str) else stop or []
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"{len(stops)} stop sequences, over the limit of {MAX_STOPS}")
    out = []
    for s in stops:
        ids = loaded.tokenizer.encode(s).ids
        if not ids:
            raise bad("stop", f"stop sequence {s!r} has no words")
        out.append(tuple(ids))
    return tuple(out)


class _Text:
    """One choice's text and logprobs as they grow, so a stream can send what is new."""

    def __init__(self) -> None:
        self.text = ""
        self.tokens: list[str] = []
        self.logprobs: list[float | None] = []
        self.top: list[dict[str, float] | None] = []
        self.offsets: list[int] = []

    def add(self, token: str, logprob: float | None, top: dict[str, float] | None) -> None:
        self.offsets.append(len(self.text))
        self.text += token
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.top.append(top)

    def add_prompt(self, text: str, enc: Encoded, scores: ScoreResult, itos: list[str]) -> None:
        """The echoed prompt: its text as sent, its words' pieces placed where they occur."""
        base = len(self.text)
        self.text += text
        lowered, at = text.lower(), 0
        for t, word in enumerate(enc.tokens):
            token = piece(word) if t else piece(word).lstrip(" ")
            found = lowered.find(token.strip(" ") or "\n", at)
            start = found if found >= 0 else at
            at = start + len(token.strip(" ") or "\n")
            if token.startswith(" ") and start > 0 and text[start - 1].isspace():
                start -= 1  # the piece's own leading space
            self.offsets.append(base + start)
            self.tokens.append(token)
            if t == 0:
                self.logprobs.append(None)
                self.top.append(None)
                continue
            self.logprobs.append(scores.logprobs[t - 1])
            alternatives = zip(scores.top_ids[t - 1], scores.top_logprobs[t - 1], strict=True)
            self.top.append({piece(itos[i]): v for i, v in alternatives} if scores.top_ids else {})

    def mark(self) -> tuple[int, int]:
        return len(self.text), len(self.tokens)

    def since(self, mark: tuple[int, int], with_logprobs: bool) -> tuple[str, Any]:
        chars, n = mark
        if not with_logprobs:
            return self.text[chars:], None
        return self.text[chars:], {
            "tokens": self.tokens[n:],
            "token_logprobs": self.logprobs[n:],
            "top_logprobs": self.top[n:],
            "text_offset": self.offsets[n:],
        }


def _word(text: _Text, word: Word) -> None:
    text.add(piece(word.word), word.logprob, {piece(w): lp for w, lp in word.top})


async def _echo_scores(engine: InferenceEngine, plan: Plan) -> list[ScoreResult]:
    if not plan.req.echo:
        return []
    rows = [ScoreRow(enc.ids, plan.req.logprobs or 0) for _, enc in plan.prompts]
    return await engine.score_rows(plan.loaded, rows)


async def complete(engine: InferenceEngine, plan: Plan) -> dict[str, Any]:
    """The answer as plain JSON-ready data in the `Completion` shape: built as dicts, not
    models, because validating it all again cost /v1 a tenth of its throughput."""
    req, itos = plan.req, plan.loaded.tokenizer.vocab.itos
    echoed = await _echo_scores(engine, plan)
    want_logprobs = req.logprobs is not None

    async def choice(p: int, sample: int) -> tuple[dict[str, Any], int]:
        prompt, enc = plan.prompts[p]
        text = _Text()
        if req.echo:
            text.add_prompt(prompt, enc, echoed[p], itos)
        generation = engine.generation(plan.loaded, enc, plan.sampling(sample))
        words = 0
        async for word in generation:
            _word(text, word)
            words += 1
        _, logprobs = text.since((0, 0), want_logprobs)
        answer = {
            "index": p * req.n + sample,
            "text": text.text,
            "logprobs": logprobs,
            "finish_reason": generation.finish_reason,
        }
        return answer, words

    pairs = [(p, s) for p in range(len(plan.prompts)) for s in range(req.n)]
    if len(pairs) == 1:
        done = [await choice(0, 0)]
    else:
        done = await together([choice(p, s) for p, s in pairs])
    return {
        "id": plan.id,
        "object": "text_completion",
        "created": plan.created,
        "model": req.model,
        "choices": [c for c, _ in done],
        "usage": _usage(plan, sum(w for _, w in done)),
    }


def _usage(plan: Plan, completion_words: int) -> dict[str, int]:
    prompt_words = sum(len(enc.ids) for _, enc in plan.prompts)
    return {
        "prompt_tokens": prompt_words,
        "completion_tokens": completion_words,
        "total_tokens": prompt_words + completion_words,
    }


def _event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def stream(engine: InferenceEngine, plan: Plan) -> AsyncIterator[bytes]:
    """Server-Sent Events: a chunk per word per choice, each choice's finish, `[DONE]`.

    A client that goes away closes this generator, which cancels every choice's loop: no
    forward pass runs for it after that.
    """
    req, itos = plan.req, plan.loaded.tokenizer.vocab.itos
    want_logprobs = req.logprobs is not None
    words = 0

    def chunk(index: int, text: str, logprobs: Any, finish: str | None) -> dict[str, Any]:
        return {
            "id": plan.id,
            "object": "text_completion",
            "created": plan.created,
            "model": req.model,
            "choices": [
                {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            ],
        }

    async def choice(p: int, sample: int, echoed: ScoreResult | None) -> AsyncIterator[dict]:
        nonlocal words
        index = p * req.n + sample
        prompt, enc = plan.prompts[p]
        text = _Text()
        if echoed is not None:
            text.add_prompt(prompt, enc, echoed, itos)
            yield chunk(index, *text.since((0, 0), want_logprobs), None)
        generation = engine.generation(plan.loaded, enc, plan.sampling(sample))
        async for word in generation:
            mark = text.mark()
            _word(text, word)
            words += 1
            yield chunk(index, *text.since(mark, want_logprobs), None)
        yield chunk(index, "", None, generation.finish_reason)

    echoed = await _echo_scores(engine, plan)
    choices = [
        choice(p, s, echoed[p] if echoed else None)
        for p in range(len(plan.prompts))
        for s in range(req.n)
    ]
    try:
        async for item in merged(choices):
            yield _event(item)
    except ApiError as e:  # headers are long sent: the error goes in the stream (the SDK reads it)
        yield _event(openai_error(e.status, e.message))
        return
    except Exception:
        log.exception("completion stream failed")
        yield _event(openai_error(500, "internal error: the server logged the details"))
        return
    if req.stream_options is not None and req.stream_options.include_usage:
        usage = _usage(plan, words)
        yield _event({**chunk(0, "", None, None), "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
