"""The inference layer: predict, generate, gates and session steps over loaded models, no
HTTP in sight.

Every torch call runs on one dedicated inference thread, never on the event loop: one thread
because intra-op parallelism already uses the cores, and a single consumer keeps the order
of work simple. Every forward pass of predict, generate and sessions is a `Step` through the
dynamic batcher (`steps.StepBatcher`), so concurrent requests for one model version share a
forward pass; with `max_batch_size=1` each runs alone, straight away.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor

from models import gates as gate_inspection
from models.lm import HALF_DTYPES, tune_decoder
from models.store import LoadedModel
from models.tokenizer import Encoded

from . import metrics
from .batcher import QueueFull
from .errors import ApiError
from .registry import ModelRegistry
from .sessions import SessionStore
from .settings import Settings
from .steps import Step, StepBatcher, StepResult, warm_up

T = TypeVar("T")
log = logging.getLogger("gatehouse.inference")


@dataclass(frozen=True, slots=True)
class GateQuery:
    """What `/gates` asks of a text: the transport-neutral form of its request body."""

    top_k: int = 5
    layers: list[int] | None = None  # None: every layer
    units: list[int] | None = None  # None: every unit
    decimals: int | None = None  # round the gate values; None: full precision
    summary_only: bool = False


class InferenceEngine:
    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.batcher = StepBatcher(
            max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms,
            max_queue=settings.max_queue,
            executor=self._executor,
            on_batch=_observe_batch,
        )
        self.sessions = SessionStore(
            self.step,
            max_sessions=settings.max_sessions,
            ttl_s=settings.session_ttl_s,
            on_count=metrics.set_sessions_active,
        )
        # Runs on the loading thread before a version is served: its first request must not
        # pay for kernel selection and allocator growth.
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
        model = loaded.model
        half = self.settings.half
        # bf16 also runs on CPUs (2x faster at batch 64 on avx512_bf16/AMX). fp16 runs on CPUs
        # too, but without fp16 matrix units it is 4x slower than float32 at batch 64 (330 vs
        # 81 ms on the dev VM), so a CPU keeps float32 for it.
        if half == "bf16" or (half == "fp16" and model.decoder.weight.is_cuda):
            # Weights and carried states in half precision; the softmax stays float32.
            model.to(HALF_DTYPES[half])
            if half == "bf16" and model.decoder.weight.is_cuda:
                # torch.backends.cudnn.is_acceptable() refuses bf16, so the RNN weights are never
                # flattened and cuDNN compacts them on every pass (H200: 1.2 vs 0.6 ms at batch 1).
                log.warning(
                    "--half bf16 on CUDA is slower than float32 for recurrent models (cuDNN "
                    "copies bf16 weights on every pass); float32 (--half off) is faster: %s@%s",
                    loaded.name,
                    loaded.version,
                )
        elif half != "off":
            log.warning(
                "--half fp16 is slow on a CPU: %s@%s stays float32 (bf16 is the CPU's fast half)",
                loaded.name,
                loaded.version,
            )
        tune_decoder(model)
        warm_up(model, sorted({1, min(self.settings.max_batch_size, 64)}))

    # ---- validation shared by every endpoint -------------------------------------------
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
    async def steps(self, loaded: LoadedModel, steps: Sequence[Step]) -> list[StepResult]:
        """Run rows through the batcher; a full queue is a 503 with Retry-After."""
        try:
            return await self.batcher.steps(loaded, steps)
        except QueueFull as e:
            raise ApiError(503, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None

    async def step(self, loaded: LoadedModel, step: Step) -> StepResult:
        return (await self.steps(loaded, [step]))[0]

    # ---- endpoints -----------------------------------------------------------------
    @staticmethod
    def _top(
        loaded: LoadedModel, logits: Tensor, top_k: int, temperature: float
    ) -> list[list[dict[str, Any]]]:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        k = min(top_k, probs.shape[-1])
        values, indices = torch.topk(probs, k, dim=-1)
        itos = loaded.tokenizer.vocab.itos
        return [
            [{"word": itos[i], "prob": p} for p, i in zip(pv, iv, strict=True)]
            for pv, iv in zip(values.tolist(), indices.tolist(), strict=True)
        ]

    @staticmethod
    def predictions(loaded: LoadedModel, result: StepResult) -> list[dict[str, Any]]:
        itos = loaded.tokenizer.vocab.itos
        return [{"word": itos[i], "prob": p} for i, p in zip(result.ids, result.probs, strict=True)]

    async def predict(
        self, ref: str | None, texts: list[str], top_k: int, temperature: float
    ) -> list[dict[str, Any]]:
        if len(texts) > self.settings.max_texts:
            raise ApiError(413, f"{len(texts)} texts, over the limit of {self.settings.max_texts}")
        self.check_top_k(top_k)
        loaded = self.registry.resolve(ref)
        encoded = [self.encode(loaded, t) for t in texts]
        results = await self.steps(
            loaded, [Step(e.ids, top_k=top_k, temperature=temperature) for e in encoded]
        )
        return [
            self._result(loaded, enc, {"predictions": self.predictions(loaded, res)})
            for enc, res in zip(encoded, results, strict=True)
        ]

    @staticmethod
    def _result(loaded: LoadedModel, enc: Encoded, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": loaded.name,
            "version": loaded.version,
            "arch": loaded.config.arch,
            "tokens": enc.tokens,
            "unknown": enc.unknown,
            **extra,
        }

    async def generate(
        self,
        ref: str | None,
        text: str,
        max_words: int,
        temperature: float | None,
        top_k: int | None,
        seed: int | None,
    ) -> dict[str, Any]:
        if max_words > self.settings.max_words:
            raise ApiError(
                422, f"max_words {max_words} over the limit of {self.settings.max_words}"
            )
        if top_k is not None:
            self.check_top_k(top_k)
        loaded = self.registry.resolve(ref)
        enc = self.encode(loaded, text)
        vocab = loaded.tokenizer.vocab
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        pick = partial(
            self._choose,
            unk_id=vocab.unk_id,
            sample=bool(temperature),
            temperature=temperature,
            top_k=top_k,
            generator=generator,
        )
        # Each word is one batched step from the carried state: concurrent generations (and
        # predictions) share forward passes, and the choice is made on the inference thread.
        words: list[str] = []
        step = Step(enc.ids, want_state=True, pick=pick)
        for n in range(max_words):
            step.want_state = n + 1 < max_words  # the last word needs no state after it
            result = await self.step(loaded, step)
            assert result.picked is not None
            words.append(vocab.itos[result.picked])
            step = Step([result.picked], state=result.state, pick=pick)
        continued = " ".join([text.rstrip(), *words]).replace(" <eos> ", "\n").strip(" ")
        return {
            "model": loaded.name,
            "version": loaded.version,
            "arch": loaded.config.arch,
            "text": continued,
            "words": words,
            "unknown": enc.unknown,
        }

    @staticmethod
    def _choose(
        logits: Tensor,
        unk_id: int,
        sample: bool,
        temperature: float | None,
        top_k: int | None,
        generator: torch.Generator | None,
    ) -> int:
        scores = logits.float().clone()
        scores[unk_id] = -math.inf  # "<unk>" stands for any rare word: never one to write
        if not sample:
            return int(scores.argmax())
        assert temperature is not None
        scores = scores / temperature
        if top_k is not None and top_k < scores.numel():
            kth = torch.topk(scores, top_k).values[-1]
            scores[scores < kth] = -math.inf
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    async def gates(self, ref: str | None, text: str, query: GateQuery) -> dict[str, Any]:
        self.check_top_k(query.top_k)
        layers, units = query.layers, query.units
        loaded = self.registry.resolve(ref)
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
        top = self._top(loaded, trace.logits.unsqueeze(0), query.top_k, 1.0)[0]
        return self._result(
            loaded,
            enc,
            {"units": units, "layers": out_layers, "summary": summary, "predictions": top},
        )


def _observe_batch(
    key: Any, items: list[tuple[LoadedModel, Step]], waits: list[float], compute_s: float
) -> None:
    loaded = items[0][0]
    tokens = [len(step.ids) for _, step in items]
    metrics.observe_batch(loaded.name, loaded.config.arch, loaded.version, waits, compute_s, tokens)
