"""Generation's word loop, shared by `/generate` and `/v1/completions`.

Each word is one `Step` through the engine's batcher from the carried state, so concurrent
generations (and predictions) share forward passes; the choice is made on the inference thread
by a `Picker`. Stop sequences are word-id sequences: a word that might begin one is held back
until it is clear it does not, so a streaming client never receives words that are then
taken back, and the stop words themselves are never sent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from models.store import LoadedModel

from .sampling import Picker
from .steps import Step, StepResult

T = TypeVar("T")
RunSteps = Callable[[LoadedModel, Sequence[Step]], Awaitable[list[StepResult]]]


@dataclass(frozen=True, slots=True)
class Sampling:
    max_words: int
    temperature: float | None = None  # None or 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[tuple[int, ...], ...] = ()  # word-id sequences that end the generation
    alternatives: int = 0  # top words (and log-probabilities) to report with each word


@dataclass(slots=True)
class Word:
    id: int
    word: str
    logprob: float  # under the model's own distribution (temperature 1, untruncated)
    top: list[tuple[str, float]] = field(default_factory=list)  # (word, logprob), best first


class Generation:
    """`async for word in Generation(...)`; then `finish_reason` is "length" or "stop"."""

    def __init__(
        self, run: RunSteps, loaded: LoadedModel, prompt_ids: Sequence[int], sampling: Sampling
    ) -> None:
        self._run = run
        self._loaded = loaded
        self._prompt = prompt_ids
        self._sampling = sampling
        self.finish_reason = "length"

    async def __aiter__(self) -> AsyncIterator[Word]:
        s = self._sampling
        itos = self._loaded.tokenizer.vocab.itos
        picker = Picker(
            self._loaded.tokenizer.vocab.unk_id, s.temperature, s.top_k, s.top_p, s.seed
        )
        held: list[Word] = []
        step = Step(self._prompt, top_k=s.alternatives, want_state=True, pick=picker)
        for n in range(s.max_words):
            step.want_state = n + 1 < s.max_words  # the last word needs no state after it
            (result,) = await self._run(self._loaded, [step])
            assert result.picked is not None
            top = [(itos[i], _log(p)) for i, p in zip(result.ids, result.probs, strict=True)]
            held.append(Word(result.picked, itos[result.picked], picker.last_logprob, top))
            ended = _ended_by(held, s.stop)
            if ended:
                for word in held[: len(held) - ended]:
                    yield word
                self.finish_reason = "stop"
                return
            keep = _open_prefix(held, s.stop)
            for word in held[: len(held) - keep]:
                yield word
            held = held[len(held) - keep :]
            step = Step([result.picked], state=result.state, top_k=s.alternatives, pick=picker)
        for word in held:  # max_words reached inside what might have become a stop
            yield word


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _ended_by(held: list[Word], stops: tuple[tuple[int, ...], ...]) -> int:
    """Length of the stop sequence that `held` now ends with, 0 if none."""
    ids = [w.id for w in held]
    for stop in stops:
        if len(stop) <= len(ids) and tuple(ids[len(ids) - len(stop) :]) == stop:
            return len(stop)
    return 0


def _open_prefix(held: list[Word], stops: tuple[tuple[int, ...], ...]) -> int:
    """How many of the last words of `held` may still begin a stop sequence."""
    ids = [w.id for w in held]
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(ids)), best, -1):
            if tuple(ids[len(ids) - n :]) == stop[:n]:
                best = n
                break
    return best


async def together(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently (their steps share batches); one failing cancels the rest."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def merged(sources: Sequence[AsyncIterator[T]]) -> AsyncIterator[T]:
    """Every source's items as they come, the sources run concurrently (n samples share
    forward passes). One source failing raises here and ends the others; so does closing
    this iterator (a streaming client gone): no more steps run for any of them."""
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()
    finished = object()

    async def drain(source: AsyncIterator[T]) -> None:
        try:
            async for item in source:
                queue.put_nowait((True, item))
            queue.put_nowait((True, finished))
        except Exception as e:  # handed over, or the reader would wait for it forever
            queue.put_nowait((False, e))

    tasks = [asyncio.ensure_future(drain(s)) for s in sources]
    try:
        remaining = len(tasks)
        while remaining:
            ok, item = await queue.get()
            if not ok:
                raise item
            if item is finished:
                remaining -= 1
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
