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
from dataclasses import dataclass
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from models import gates as gate_inspection
from models.store import LoadedModel
from models.tokenizer import Encoded

from . import generate, metrics
from .batcher import DynamicBatcher, QueueFull
from .errors import ApiError
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
from .sessions import EmptyFeed, FeedResult, SessionForbidden, SessionNotFound, SessionStore
from .settings import Settings
from .steps import Step, run_steps

T = TypeVar("T")
Row = Step | ScoreRow  # what the batcher carries: a next-word step, or a text to score


@dataclass(frozen=True, slots=True)
class GateQuery:
    """What `/gates` asks of a text: the transport-neutral form of its request body."""

    top_k: int = 5
    layers: list[int] | None = None  # None: every layer
    units: list[int] | None = None  # None: every unit
    decimals: int | None = None  # round the gate values; None: full precision
    summary_only: bool = False


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
            executor=self._executor,
            on_batch=_observe_batch,
        )
        self.sessions = SessionStore(
            self.batcher.submit,
            max_sessions=settings.max_sessions,
            ttl_s=settings.session_ttl_s,
            on_count=metrics.set_sessions_active,
        )
        registry.on_load.append(self._prepare)

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
        steps = [r for r in rows if isinstance(r, Step)]
        if len(steps) == len(rows):
            return run_steps(loaded.model, steps)
        scored = iter(run_scores(loaded.model, [r for r in rows if isinstance(r, ScoreRow)]))
        stepped = iter(run_steps(loaded.model, steps))
        return [next(stepped) if isinstance(r, Step) else next(scored) for r in rows]

    # ---- validation shared by every endpoint -------------------------------------------
    def resolve(self, ref: str | None) -> LoadedModel:
        """The served version for `name` / `name@N` / None (404 or 503 as `ApiError`)."""
        loaded = self.registry.resolve(ref)
        set_request_model(loaded.name)  # for the access log line
        return loaded

    def encode(self, loaded: LoadedModel, text: str, max_tokens: int | None = None) -> Encoded:
        limit = max_tokens or self.settings.max_tokens
        # Cheap pre-check: a text of N characters has at most N tokens, but tokenizing a
        # megabyte only to refuse it would still be work done for nothing.
        if len(text) > limit * 64:
            raise ApiError(413, f"text over {limit * 64} characters (limit: {limit} tokens)")
        enc = loaded.tokenizer.encode(text)
        if not enc.ids:
            raise ApiError(422, "text has no words")
        if len(enc.ids) > limit:
            raise ApiError(
                413, f"text has {len(enc.ids)} tokens, over the limit of {limit} (max_tokens)"
            )
        return enc

    def check_top_k(self, top_k: int) -> None:
        if top_k > self.settings.max_top_k:
            raise ApiError(422, f"top_k {top_k} over the limit of {self.settings.max_top_k}")

    # ---- the seam: every forward pass --------------------------------------------------
    async def _steps(self, loaded: LoadedModel, steps: Sequence[Row]) -> list[Any]:
        """Run rows through the batcher; a full queue is a 503 with Retry-After."""
        try:
            return await self.batcher.submit_many(loaded, steps)
        except QueueFull as e:
            raise ApiError(503, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None

    # ---- endpoints -----------------------------------------------------------------
    @staticmethod
    def _predictions(loaded: LoadedModel, ids: list[int], probs: list[float]) -> list[Prediction]:
        itos = loaded.tokenizer.vocab.itos
        return [Prediction(word=itos[i], prob=p) for i, p in zip(ids, probs, strict=True)]

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
            session = self.sessions.authorize(session_id, token)
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

    async def gates(self, ref: str | None, text: str, query: GateQuery) -> dict[str, Any]:
        self.check_top_k(query.top_k)
        layers, units = query.layers, query.units
        loaded = self.resolve(ref)
        cfg = loaded.config
        bad_layers = [k for k in layers or [] if not 0 <= k < cfg.num_layers]
        if bad_layers:
            raise ApiError(422, f"layers {bad_layers} out of range 0..{cfg.num_layers - 1}")
        bad_units = [u for u in units or [] if not 0 <= u < cfg.hidden_size]
        if bad_units:
            raise ApiError(422, f"units {bad_units[:10]} out of range 0..{cfg.hidden_size - 1}")
        enc = self.encode(loaded, text, self.settings.max_gate_tokens)
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
        return await self._run(self._gates_sync, loaded, enc, query)

    def _gates_sync(self, loaded: LoadedModel, enc: Encoded, query: GateQuery) -> dict[str, Any]:
        layers, units = query.layers, query.units
        with torch.inference_mode():
            trace = gate_inspection.inspect(loaded.model, torch.tensor(enc.ids))
        keep = sorted(set(layers)) if layers else list(range(len(trace.layers)))
        unit_index = torch.tensor(units, dtype=torch.long) if units else None
        chosen: list[dict[str, Tensor]] = []
        for k in keep:
            states = trace.layers[k]
            if unit_index is not None:
                states = {
                    key: v.index_select(1, unit_index.to(v.device)) for key, v in states.items()
                }
            chosen.append(states)
        # The summary describes exactly the rows returned (same layers, same units).
        sliced = gate_inspection.GateTrace(arch=trace.arch, layers=chosen, logits=trace.logits)
        summary = gate_inspection.summary(sliced)
        for entry, k in zip(summary["layers"], keep, strict=True):
            entry["layer"] = k
        out_layers = []
        if not query.summary_only:
            for k, states in zip(keep, chosen, strict=True):
                gates = {}
                for key, v in states.items():
                    # float64 before rounding: a rounded float32 prints as 0.492000013...
                    v = v.double().cpu()
                    if query.decimals is not None:
                        v = torch.round(v, decimals=query.decimals)
                    gates[key] = v.tolist()
                out_layers.append({"layer": k, "gates": gates})
        probs = torch.softmax(trace.logits.float(), dim=-1)
        values, indices = torch.topk(probs, min(query.top_k, probs.shape[-1]))
        itos = loaded.tokenizer.vocab.itos
        top = [
            {"word": itos[i], "prob": p}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
        return {
            **served(loaded),
            "tokens": enc.tokens,
            "unknown": enc.unknown,
            "units": units,
            "layers": out_layers,
            "summary": summary,
            "predictions": top,
        }


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
