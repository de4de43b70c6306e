"""The inference layer: predict, generate, gates and session feeds over loaded models, no
HTTP in sight. Each public method takes the typed request and returns the typed response.

Every torch call runs on one dedicated inference thread, never on the event loop, and so does
preparing a freshly loaded version (`prepare.py`): one thread because intra-op parallelism
already uses the cores, and a single consumer keeps the order of work simple. Every forward
pass of predict, generate and sessions is a `Step` through the dynamic batcher, keyed by the
`LoadedModel` itself, so concurrent requests for one model version share a forward pass; with
`max_batch_size=1` each runs alone, straight away.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import torch

from models import gates as gate_inspection
from models.store import LoadedModel
from models.tokenizer import Encoded

from . import generate, metrics
from .batcher import Departed, DynamicBatcher, QueueFull
from .departure import ClientGone, client_gone
from .errors import ApiError
from .gate_answer import GateAnswer, GateQuery, GateRow, run_gates
from .generation import Generation, Sampling
from .logs import set_request_model
from .prepare import prepare
from .registry import ModelRegistry
from .schemas.common import Prediction, TextsRequest
from .schemas.predict import (
    GenerateRequest,
    GenerateResponse,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
)
from .schemas.score import ScoreBatchResponse, ScoreRequest, ScoreResponse
from .schemas.sessions import FeedRequest, FeedResponse
from .scoring import ScoreResult, ScoreRow, run_scores
from .session_store import SessionBackend, make_session_store
from .sessions import (
    EmptyFeed,
    FeedResult,
    SessionBusy,
    SessionForbidden,
    SessionNotFound,
    SessionStoreUnavailable,
)
from .settings import Settings
from .steps import Step, run_steps

T = TypeVar("T")
# What the batcher carries: a next-word step, a text to score, or a gate trace (heavy).
Row = Step | ScoreRow | GateRow

__all__ = ["GateAnswer", "GateQuery", "InferenceEngine", "served"]


def served(loaded: LoadedModel) -> dict[str, Any]:
    """The `Served` fields of a response: which model version answered."""
    return {"model": loaded.name, "version": loaded.version, "arch": loaded.config.arch}


class InferenceEngine:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._max_threads = torch.get_num_threads()
        # The intra-op thread count each prepared version runs its passes with.
        self._threads: WeakKeyDictionary[LoadedModel, int] = WeakKeyDictionary()
        self.batcher: DynamicBatcher[LoadedModel, Row, Any] = DynamicBatcher(
            self._forward,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            max_queue=settings.max_queue,
            max_wait_ms=settings.max_queue_wait_ms,
            max_heavy=settings.max_gate_queue,
            heavy_share=settings.gate_share,
            executor=self._executor,
            on_batch=_observe_batch,
        )
        self.sessions: SessionBackend = make_session_store(
            settings,
            self._submit_one,
            lambda name, version: self.registry.resolve(f"{name}@{version}"),
            on_count=metrics.set_sessions_active,
        )
        registry.on_load.append(self._prepare)

    async def _submit_one(self, loaded: LoadedModel, step: Step) -> Any:
        """One session step: admitted like the rest, dropped if its client has gone."""
        try:
            return await self.batcher.submit(loaded, step, gone=client_gone())
        except Departed:
            raise ClientGone from None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The inference thread: work submitted here is serialised with every forward pass."""
        return self._executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self.sessions.shutdown()
        self.batcher.shutdown()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, loaded: LoadedModel) -> None:
        """Registry hook, on the loading thread: the work itself waits its turn on the
        inference thread, so it never overlaps a forward pass."""
        settings = self.settings
        self._threads[loaded] = self._executor.submit(
            prepare, loaded, settings.half, settings.max_batch_size, self._max_threads
        ).result()

    def _forward(self, loaded: LoadedModel, rows: list[Row]) -> list[Any]:
        """The batch function, on the inference thread: one forward pass of `loaded` for the
        steps, and one for the texts to score when the batch has any."""
        threads = self._threads.get(loaded, self._max_threads)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        if any(isinstance(r, GateRow) for r in rows):  # heavy: the batcher runs each alone
            return [self._forward_one(loaded, r) for r in rows]
        steps = [r for r in rows if isinstance(r, Step)]
        if len(steps) == len(rows):
            return run_steps(loaded.model, steps)
        scored = iter(run_scores(loaded.model, [r for r in rows if isinstance(r, ScoreRow)]))
        stepped = iter(run_steps(loaded.model, steps))
        return [next(stepped) if isinstance(r, Step) else next(scored) for r in rows]

    def _forward_one(self, loaded: LoadedModel, row: Row) -> Any:
        if isinstance(row, GateRow):
            return run_gates(loaded.model, row)
        return self._forward(loaded, [row])[0]

    # ---- validation shared by every endpoint -------------------------------------------
    def resolve(self, ref: str | None) -> LoadedModel:
        """The served version for `name` / `name@N` / None (404 or 503 as `ApiError`)."""
        loaded = self.registry.resolve(ref)
        set_request_model(loaded.name)  # for the access log line
        return loaded

    def encode(
        self,
        loaded: LoadedModel,
        text: str,
        max_tokens: int | None = None,
        setting: str = "max_tokens",
    ) -> Encoded:
        """`text` encoded, or a 413 naming `setting`, the limit that refused it."""
        limit = max_tokens or self.settings.max_tokens
        # Cheap pre-check: a text of N characters has at most N tokens, but tokenizing a
        # megabyte only to refuse it would still be work done for nothing.
        if len(text) > limit * 64:
            raise ApiError(
                413, f"text over {limit * 64} characters (limit: {limit} tokens, {setting})"
            )
        enc = loaded.tokenizer.encode(text)
        if not enc.ids:
            raise ApiError(422, "text has no words")
        if len(enc.ids) > limit:
            raise ApiError(
                413, f"text has {len(enc.ids)} tokens, over the limit of {limit} ({setting})"
            )
        return enc

    def check_top_k(self, top_k: int) -> None:
        if top_k > self.settings.max_top_k:
            raise ApiError(422, f"top_k {top_k} over the limit of {self.settings.max_top_k}")

    # ---- the seam: every forward pass --------------------------------------------------
    async def _steps(
        self, loaded: LoadedModel, steps: Sequence[Row], heavy: bool = False
    ) -> list[Any]:
        """Run rows through the batcher: the admission every model-touching call meets. A full
        queue is a 503 with Retry-After; a request whose client has gone is dropped."""
        try:
            return await self.batcher.submit_many(loaded, steps, heavy=heavy, gone=client_gone())
        except Departed:
            raise ClientGone from None
        except QueueFull as e:
            raise ApiError(503, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None

    # ---- endpoints -----------------------------------------------------------------
    @staticmethod
    def _predictions(loaded: LoadedModel, ids: list[int], probs: list[float]) -> list[Prediction]:
        itos = loaded.tokenizer.vocab.itos
        # Built from the vocabulary and a softmax: nothing to validate.
        make = Prediction.model_construct
        return [make(word=itos[i], prob=p) for i, p in zip(ids, probs, strict=True)]

    def _admit(self, req: TextsRequest, top_k: int) -> tuple[LoadedModel, list[Encoded]]:
        """The limits every text request meets, then its model and its texts encoded."""
        texts = req.all_texts()
        if len(texts) > self.settings.max_texts:
            raise ApiError(413, f"{len(texts)} texts, over the limit of {self.settings.max_texts}")
        self.check_top_k(top_k)
        loaded = self.resolve(req.model)
        return loaded, [self.encode(loaded, t) for t in texts]

    async def predict(self, req: PredictRequest) -> PredictResponse | PredictBatchResponse:
        loaded, encoded = self._admit(req, req.top_k)
        rows = [Step(e.ids, top_k=req.top_k, temperature=req.temperature) for e in encoded]
        results = await self._steps(loaded, rows)
        answers = [
            PredictResponse(
                **served(loaded),
                tokens=enc.tokens,
                unknown=enc.unknown,
                predictions=self._predictions(loaded, res.ids, res.probs),
            )
            for enc, res in zip(encoded, results, strict=True)
        ]
        return answers[0] if req.text is not None else PredictBatchResponse(results=answers)

    def check_max_words(self, max_words: int) -> None:
        if max_words > self.settings.max_words:
            limit = self.settings.max_words
            raise ApiError(422, f"max_words {max_words} over the limit of {limit}")

    def generation(self, loaded: LoadedModel, prompt: Encoded, sampling: Sampling) -> Generation:
        """The word loop for `prompt`, every step through the batcher (see generation.py)."""
        return Generation(self._steps, loaded, prompt.ids, sampling)

    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        return await generate.run(self, generate.plan(self, req))

    async def score_rows(self, loaded: LoadedModel, rows: Sequence[ScoreRow]) -> list[ScoreResult]:
        """Score texts already encoded: one batched pass with whatever else is queued."""
        return await self._steps(loaded, rows)

    async def score(self, req: ScoreRequest) -> ScoreResponse | ScoreBatchResponse:
        loaded, encoded = self._admit(req, req.top_k)
        results = await self.score_rows(loaded, [ScoreRow(e.ids, req.top_k) for e in encoded])
        answers = [
            _score_response(loaded, e, r, req.top_k) for e, r in zip(encoded, results, strict=True)
        ]
        return answers[0] if req.text is not None else ScoreBatchResponse(results=answers)

    async def feed(self, session_id: str, req: FeedRequest, token: str | None) -> FeedResponse:
        """Advance a session by `req.text`: one lookup, which checks the session's token,
        and the session's own tokenizer. The answer is made before the session keeps the
        new state, so a feed that fails anywhere leaves the session as it was."""
        self.check_top_k(req.top_k)

        def answer(out: FeedResult) -> FeedResponse:
            loaded = out.session.loaded
            return FeedResponse(
                **served(loaded),
                session_id=out.session.id,
                history_length=out.history_length,
                tokens=out.tokens,
                unknown=out.unknown,
                predictions=self._predictions(loaded, out.word_ids, out.probs),
            )

        try:
            session = await self.sessions.authorize_session(session_id, token)
            set_request_model(session.loaded.name)
            encoded = self.encode(session.loaded, req.text)
            return await self.sessions.feed_with(
                session, encoded, answer, req.top_k, req.temperature
            )
        except SessionNotFound as e:
            raise ApiError(404, str(e)) from None
        except SessionForbidden as e:
            raise ApiError(403, str(e)) from None
        except EmptyFeed as e:
            raise ApiError(422, str(e)) from None
        except QueueFull as e:
            raise ApiError(503, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
        except (SessionBusy, SessionStoreUnavailable) as e:
            raise ApiError(503, str(e), headers={"Retry-After": "1"}) from None

    async def gates(self, ref: str | None, text: str, query: GateQuery) -> GateAnswer:
        """Every gate of the cell on every token of `text`; a heavy item of the batcher, so it
        meets the same bounded admission as a prediction, and its own smaller bound."""
        self.check_top_k(query.top_k)
        layers, units = query.layers, query.units
        if layers == [] or units == []:
            raise ApiError(422, "layers and units must not be empty lists (leave one out: all)")
        loaded = self.resolve(ref)
        cfg = loaded.config
        bad_layers = [k for k in layers or [] if not 0 <= k < cfg.num_layers]
        if bad_layers:
            raise ApiError(422, f"layers {bad_layers} out of range 0..{cfg.num_layers - 1}")
        bad_units = [u for u in units or [] if not 0 <= u < cfg.hidden_size]
        if bad_units:
            raise ApiError(422, f"units {bad_units[:10]} out of range 0..{cfg.hidden_size - 1}")
        enc = self.encode(loaded, text, self.settings.max_gate_tokens, "max_gate_tokens")
        if not query.summary_only:
            n_keys = len(gate_inspection.GATE_KEYS[cfg.arch])
            n_layers = len(set(layers)) if layers else cfg.num_layers
            n_values = len(enc.ids) * len(units or range(cfg.hidden_size)) * n_keys * n_layers
            if n_values > self.settings.max_gate_values:
                raise ApiError(
                    413,
                    f"{n_values} gate values asked for, over the limit of "
                    f"{self.settings.max_gate_values} (max_gate_values): ask for fewer "
                    "layers or units, a shorter text, or summary_only",
                )
        (values,) = await self._steps(loaded, [GateRow(enc.ids, query)], heavy=True)
        itos = loaded.tokenizer.vocab.itos
        return GateAnswer(
            **served(loaded),
            tokens=enc.tokens,
            unknown=enc.unknown,
            units=units,
            predictions=[
                {"word": itos[i], "prob": p}
                for i, p in zip(values.top_ids, values.top_probs, strict=True)
            ],
            values=values,
            decimals=None if query.summary_only else query.decimals,
            on_encoded=self.batcher.charge_heavy,
        )


def _score_response(
    loaded: LoadedModel, enc: Encoded, result: ScoreResult, top_k: int
) -> ScoreResponse:
    total = sum(result.logprobs)
    n = len(result.logprobs)
    itos = loaded.tokenizer.vocab.itos
    top = None
    if top_k > 0:
        top = [None] + [
            [Prediction(word=itos[i], prob=math.exp(v)) for i, v in zip(ids, vals, strict=True)]
            for ids, vals in zip(result.top_ids, result.top_logprobs, strict=True)
        ]
    return ScoreResponse(
        **served(loaded),
        tokens=enc.tokens,
        unknown=enc.unknown,
        logprobs=[None, *result.logprobs],
        top=top,
        total_logprob=total,
        perplexity=math.exp(-total / n) if n else None,
    )


def _observe_batch(
    loaded: LoadedModel, steps: list[Step], waits: list[float], compute_s: float
) -> None:
    tokens = [len(step.ids) for step in steps]
    metrics.observe_batch(loaded.name, loaded.config.arch, loaded.version, waits, compute_s, tokens)
