"""Data-parallel training: one `Trainer` per process, gradients averaged by DDP.

Data order. The training stream is batchified into the global batch of B rows exactly as in
one process; with N processes rank r trains rows [r*B/N, (r+1)*B/N) (B must divide by N). Each
rank's loss is the mean over its rows and DistributedDataParallel averages the gradients, so a
step equals one process's step over all B rows up to the order of floating-point sums. The
hidden state carried across steps stays on its rank, with its rows.

Agreement. Whatever leads to a collective happens at the same step on every rank, or the ranks
would wait on each other forever: stop requests (a signal may reach one rank, or reach the
ranks at different steps), progress reports and interval checkpoints (rank 0's clock decides)
are agreed in one small all-reduce after each step; a stop takes effect before the next.
Validation runs on rank 0 only and its sum is broadcast, so the learning-rate schedule, early
stopping and the weights kept are decided once, on the very number one process would compute.

Checkpoints. Rank 0 writes them in the one-process format: the hidden state gathered back
into [layers, B, hidden] and every other rank's RNG stored beside rank 0's. Any process count
that divides B resumes them, one process included, and every rank reads the same file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

import models.train.state as train_state
from models import checkpoint as ckpt
from models.corpus import Corpus
from models.evaluate import nll_sum
from models.lm import RNNLM
from models.regularize import Regularization, train_forward

from .config import STOP_CHECKPOINT, TrainConfig, TrainingCancelled, TrainingError, TrainResult
from .loop import Trainer
from .ranks import Hidden, check_processes, hidden_rows, rank_rows

_NO_STOP, _CHECKPOINT, _CANCEL = 0, 1, 2  # MAX-reduced: a cancel beats a checkpoint


def _rank_seed(seed: int, rank: int) -> int:
    # Dropout masks must differ between ranks; rank 0 keeps the one-process stream.
    return (seed * 1_000_003 + rank) % (2**63)


class DistributedTrainer(Trainer):
    """A `Trainer` for one rank of an initialised process group; see the module doc."""

    def __init__(
        self,
        cfg: TrainConfig,
        corpus: Corpus,
        callback: Callable[[dict[str, Any]], None] | None,
        should_stop: Callable[[], Any] | None,
        checkpoint_dir: str | None,
    ) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.agreed_stop = _NO_STOP
        main = self.rank == 0
        super().__init__(
            cfg if main else replace(cfg, progress_bar=False),
            corpus,
            callback if main else None,
            should_stop,
            checkpoint_dir,
        )
        if self.batch_size % self.world:
            raise TrainingError(
                f"the corpus allows {self.batch_size} rows only, which do not divide by "
                f"{self.world} processes"
            )
        self.data = rank_rows(self.data, self.rank, self.world)
        if self.rank:
            torch.manual_seed(_rank_seed(cfg.seed, self.rank))
        # Agreement and checkpoint traffic is small and lives on the host: under nccl it
        # goes through a gloo group, so it never waits for the GPU's queue.
        self.control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.net = DistributedDataParallel(_StepForward(self.model, self.reg), device_ids=ids)

    def _forward(self, x: Tensor) -> tuple[Tensor, Any, Tensor | None]:
        return self.net(x, self.hidden)  # through DDP, whose hooks average the gradients

    # ---- agreement ---------------------------------------------------------------------

    def _agree(self, values: list[int], op: Any = dist.ReduceOp.MAX) -> list[int]:
        flags = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(flags, op=op, group=self.control)
        return [int(v) for v in flags.tolist()]

    def _after_step(self) -> None:
        request = self.should_stop() if self.should_stop is not None else None
        code = _NO_STOP if not request else _CHECKPOINT if request == STOP_CHECKPOINT else _CANCEL
        report = checkpoint = 0
        if self.rank == 0:
            now = time.monotonic()
            report = int(now - self.last_report >= self.cfg.progress_interval_s)
            checkpoint = int(now - self.last_checkpoint >= self.cfg.checkpoint_interval_s)
        self.agreed_stop, report, checkpoint = self._agree([code, report, checkpoint])
        if report:
            self._report()
        if checkpoint and not self.agreed_stop:
            self.save_checkpoint()

    def _poll(self) -> None:
        # Acts on the stop agreed after the last step: every rank sees the same one.
        code, self.agreed_stop = self.agreed_stop, _NO_STOP
        if code == _CHECKPOINT and self.checkpoint_dir is not None:
            self.save_checkpoint()
            raise TrainingCancelled(
                f"stopped at step {self.loop.step} with a checkpoint",
                checkpointed=True,
                step=self.loop.step,
            )
        if code:
            raise TrainingCancelled(f"cancelled at step {self.loop.step}", step=self.loop.step)

    def _flush_window(self) -> float | None:
        if self.window_tokens == 0:  # the same on every rank: each trains the same steps
            return None
        dist.all_reduce(self.window_loss)  # summed token NLL over all rows
        self.window_tokens *= self.world
        return super()._flush_window()

    def _validation_nll(self) -> tuple[float, int]:
        result = torch.zeros(2, dtype=torch.float64)
        if self.rank == 0:
            # No poll inside: a stop request is agreed at the next step, not here alone.
            total, count = nll_sum(
                self.model, self.corpus.valid, self.cfg.eval_batch_size, self.cfg.bptt
            )
            result = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.broadcast(result, src=0, group=self.control)
        return float(result[0]), int(result[1])

    # ---- what is reported --------------------------------------------------------------

    def _tokens_per_s(self) -> float:
        return super()._tokens_per_s() * self.world  # every rank trains as many tokens

    def _progress(self, event: str, loss: float | None) -> dict[str, Any]:
        info = super()._progress(event, loss)
        info["tokens"] = self.session_tokens * self.world
        return info

    # ---- checkpoints -------------------------------------------------------------------

    def _gather(self, local: Tensor) -> list[Tensor] | None:
        """Every rank's `local` on rank 0 (in rank order), None elsewhere."""
        local = local.detach().to("cpu").contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(local, parts, dst=0, group=self.control)
        return parts

    def _gathered_hidden(self) -> Hidden:
        if self.hidden is None:  # at an epoch's end, on every rank at once
            return None
        hs = self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)
        full = [self._gather(h) for h in hs]
        if self.rank:
            return None
        whole = [torch.cat(parts, dim=1) for parts in full if parts is not None]
        return (whole[0], whole[1]) if len(whole) == 2 else whole[0]

    def _rng_states(self) -> dict[str, Tensor]:
        states = {"rng.cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        out: dict[str, Tensor] = {}
        for name, state in states.items():
            parts = self._gather(state) or []
            out.update({f"rank.{r}.{name}": parts[r] for r in range(1, len(parts))})
        return out

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        hidden, rngs = self._gathered_hidden(), self._rng_states()
        if self.rank == 0:
            tensors, meta = train_state.capture(
                self.model,
                self.opt,
                self.loop,
                best_state=self.best_state,
                hidden=hidden,
                device=self.device,
                fingerprint=train_state.fingerprint(self.cfg, self.corpus),
                elapsed=self.elapsed_before + time.monotonic() - self.session_start,
            )
            avg_tensors, meta["average"] = self.average.to_checkpoint()
            tensors.update(avg_tensors)
            tensors.update(rngs)
            meta["processes"] = self.world
            ckpt.save_checkpoint(self.checkpoint_dir, tensors, meta)
        # Once any rank goes on (or stops), the checkpoint is on disk.
        dist.barrier(group=self.control)
        self.last_checkpoint = time.monotonic()

    def _resume(self) -> bool:
        loaded, problem = None, ""
        try:
            loaded = self._restore()
        except TrainingError as e:
            problem = str(e)
        step = self.loop.step if loaded else -1
        failed, high, neg_low = self._agree([int(bool(problem)), step, -step])
        if problem:
            raise TrainingError(problem)
        if failed:
            raise TrainingError("another rank could not resume from the checkpoint")
        if high != -neg_low:
            raise TrainingError(
                "the ranks found different checkpoints: the checkpoint directory must be "
                "the same (shared) one for every process"
            )
        return loaded is not None

    def _restore(self) -> bool | None:
        if self.checkpoint_dir is None:
            return None
        try:
            loaded = ckpt.load_checkpoint(self.checkpoint_dir)
        except ckpt.CheckpointError as e:
            raise TrainingError(str(e)) from e
        if loaded is None:
            return None
        tensors, meta = loaded
        restored = train_state.restore(
            tensors,
            meta,
            self.model,
            self.opt,
            self.loop,
            device=self.device,
            fingerprint=train_state.fingerprint(self.cfg, self.corpus),
            where=str(self.checkpoint_dir),
        )
        self.best_state, self.elapsed_before = restored.best_state, restored.elapsed
        try:
            self.average.load_checkpoint(self.model, tensors, meta.get("average"), self.device)
        except ValueError as e:
            raise TrainingError(f"checkpoint in {self.checkpoint_dir} is inconsistent: {e}") from e
        rows = None if restored.hidden is None else _rows_of(restored.hidden)
        if rows is not None and rows != self.batch_size:
            raise TrainingError(f"the checkpoint's state has {rows} rows, not {self.batch_size}")
        self.hidden = hidden_rows(restored.hidden, self.rank, self.world)
        if self.rank:
            own = tensors.get(f"rank.{self.rank}.rng.cpu")
            if own is not None:
                torch.set_rng_state(own)
            else:  # written by fewer processes: a fresh stream, still one per rank and step
                torch.manual_seed(_rank_seed(self.cfg.seed + self.loop.step, self.rank))
            own_cuda = tensors.get(f"rank.{self.rank}.rng.cuda")
            if own_cuda is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(own_cuda, self.device)
        return True

    # ---- the end -----------------------------------------------------------------------

    def _finish(self) -> TrainResult:
        if self.rank == 0:
            result = super()._finish()
            result.metrics["processes"] = self.world
            return result
        # The other ranks hold the same weights; the final evaluation is rank 0's alone.
        if self.best_state is None:
            self.average.copy_to(self.model)
        else:
            state = dict(self.best_state)
            if self.model.cfg.tied:
                state["decoder.weight"] = state["embedding.weight"]
            self.model.load_state_dict(state)
        self.model.eval()
        return TrainResult(
            model=self.model,
            tokenizer=self.corpus.tokenizer,
            config=self.cfg,
            metrics={"processes": self.world, "rank": self.rank},
            history=list(self.loop.history),
        )


class _StepForward(torch.nn.Module):
    """The training step's forward (regularised or not) as the module DDP wraps."""

    def __init__(self, model: RNNLM, reg: Regularization) -> None:
        super().__init__()
        self.model, self.reg = model, reg

    def forward(self, x: Tensor, hidden: Hidden) -> tuple[Tensor, Any, Tensor | None]:
        return train_forward(self.model, x, hidden, self.reg)


def _rows_of(hidden: Tensor | tuple[Tensor, Tensor]) -> int:
    return int((hidden[0] if isinstance(hidden, tuple) else hidden).shape[1])


def train_distributed(
    cfg: TrainConfig,
    corpus: Corpus,
    callback: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], Any] | None = None,
    checkpoint_dir: str | None = None,
) -> TrainResult:
    """`train()` for one rank of an initialised process group (every rank calls it).

    `callback` runs on rank 0 only; `should_stop` is asked on every rank and the ranks stop
    together when any of them asks. Rank 0's result carries the final metrics.
    """
    if not dist.is_initialized():
        raise TrainingError("train_distributed needs an initialised process group")
    try:
        check_processes(cfg.batch_size, dist.get_world_size())
    except ValueError as e:
        raise TrainingError(str(e)) from None
    threads_before = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return DistributedTrainer(cfg, corpus, callback, should_stop, checkpoint_dir).run()
    finally:
        torch.set_num_threads(threads_before)
