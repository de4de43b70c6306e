"""The training loop: truncated BPTT over batch-first streams, progress, cancel, checkpoints.

The training stream is cut into `batch_size` contiguous rows ([B, N]); each step takes the next
`bptt` columns and carries the hidden state over from the previous step (detached), so the
model sees long contexts while gradients flow through at most `bptt` steps. The hidden state
starts from zero at every epoch.

Stopping protocol, polled before every step (and between validation chunks):
`should_stop()` returns something falsy to go on, `"checkpoint"` to write a checkpoint (when a
`checkpoint_dir` was given) and stop, anything else truthy to cancel. Either way train() raises
`TrainingCancelled`; its `checkpointed` attribute says whether a checkpoint was written. A later
train() with the same config, corpus and `checkpoint_dir` resumes from the checkpoint and ends
with the same weights as a run that was never interrupted (on CPU; same thread count).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

import models.train.state as train_state
from models import checkpoint as ckpt
from models.averaging import IterateAverage
from models.corpus import Corpus
from models.device import resolve_device
from models.evaluate import final_metrics, nll_sum
from models.lm import RNNLM
from models.regularize import Regularization, train_forward

from .check import HeldOutCheck
from .config import STOP_CHECKPOINT, TrainConfig, TrainingCancelled, TrainingError, TrainResult
from .state import LoopState

# Seeding and initialisation use torch's global RNG: trainings started at once in several
# threads (models.defaults) take turns so each model's initial weights depend on its seed only.
_INIT_LOCK = threading.Lock()


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """[N] -> [B, N // B]: B contiguous rows (the tail that does not fit is dropped)."""
    cols = ids.numel() // batch_size
    return ids[: cols * batch_size].view(batch_size, cols)


def _detach(hidden: Any) -> Any:
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)
    return None if hidden is None else hidden.detach()


def set_gate_bias(model: RNNLM, value: float) -> None:
    """Set the input-side bias of the LSTM forget gate or the GRU update gate in every layer.

    PyTorch's gate order is (i, f, g, o) for the LSTM and (r, z, n) for the GRU, so the gate
    is the second block of H in both; the hidden-side bias of that gate is zeroed.
    """
    if model.cfg.arch == "rnn":
        return
    h = model.cfg.hidden_size
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[h : 2 * h] = value
            elif name.startswith("bias_hh"):
                p[h : 2 * h] = 0.0


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))  # exp() overflows beyond ~709


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        corpus: Corpus,
        callback: Callable[[dict[str, Any]], None] | None,
        should_stop: Callable[[], Any] | None,
        checkpoint_dir: str | None,
        check: HeldOutCheck | None = None,
    ) -> None:
        self.cfg = cfg
        self.check = check
        self.corpus = corpus
        self.callback = callback
        self.should_stop = should_stop
        self.checkpoint_dir = checkpoint_dir
        try:
            self.device = resolve_device(cfg.device)
        except RuntimeError as e:
            raise TrainingError(str(e)) from None
        self.amp = cfg.amp and self.device.type == "cuda"

        vocab_size = len(corpus.tokenizer.vocab)
        with _INIT_LOCK:
            torch.manual_seed(cfg.seed)
            self.model = RNNLM(cfg.model_config(vocab_size))
        if cfg.gate_bias is not None:
            set_gate_bias(self.model, cfg.gate_bias)
        if cfg.unigram_bias:
            # Start at the unigram distribution: the first steps then learn context, not counts.
            counts = torch.bincount(corpus.train, minlength=vocab_size).double() + 0.5
            self.model.decoder.bias.data = (counts / counts.sum()).log().float()
        self.model.to(self.device).train()
        params = self.model.parameters()
        # The fused kernels update each tensor in one pass. PyTorch's default on the CPU is a
        # Python loop of separate element-wise ops: at 2x200 with WikiText-2's 33k words
        # (13.9M parameters) that Adam step was ~17% of a training step (docs/benchmarks/
        # train-vs-peer.md); fused it is ~10x cheaper.
        fused = self.device.type in ("cpu", "cuda")
        if cfg.optimizer in ("adam", "adamw"):
            adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
            self.opt: torch.optim.Optimizer = adam(
                params, lr=cfg.effective_lr, weight_decay=cfg.weight_decay, fused=fused
            )
        else:
            self.opt = torch.optim.SGD(
                params, lr=cfg.effective_lr, weight_decay=cfg.weight_decay, fused=fused
            )
        self.average = IterateAverage()  # ntasgd's; inactive otherwise

        # Far worse than guessing uniformly (loss log V): the run has blown up even while the
        # numbers are still finite.
        self.reg = Regularization.from_config(cfg)
        self.diverged_loss = 10.0 * math.log(vocab_size) + 10.0
        n = corpus.train.numel()
        # A tiny corpus gets fewer rows rather than failing: each row needs 2+ tokens.
        self.batch_size = max(1, min(cfg.batch_size, n // 2))
        self.data = batchify(corpus.train, self.batch_size).to(self.device)
        self.steps_per_epoch = math.ceil((self.data.shape[1] - 1) / cfg.bptt)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        # The schedule is laid over the planned steps; a check may add steps past them.
        self.planned_steps = self.total_steps
        self.best_check = -math.inf
        self.check_val_ppl: float | None = None  # validation of the epoch the check chose

        # Everything below is saved in checkpoints.
        self.loop = LoopState()
        self.hidden: Any = None
        self.best_state: dict[str, Tensor] | None = None
        self.elapsed_before = 0.0  # wall time of earlier sessions (resumed runs)

        # This session only.
        self.session_start = time.monotonic()
        self.session_steps = 0
        self.session_eval_s = 0.0
        self.session_tokens = 0
        self.last_report = time.monotonic()
        self.last_checkpoint = time.monotonic()
        self.window_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.window_tokens = 0
        self.bar: tqdm | None = None

    # ---- checkpoints -------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        tensors, meta = train_state.capture(
            self.model,
            self.opt,
            self.loop,
            best_state=self.best_state,
            hidden=self.hidden,
            device=self.device,
            fingerprint=train_state.fingerprint(self.cfg, self.corpus),
            elapsed=self.elapsed_before + time.monotonic() - self.session_start,
        )
        avg_tensors, meta["average"] = self.average.to_checkpoint()
        tensors.update(avg_tensors)
        ckpt.save_checkpoint(self.checkpoint_dir, tensors, meta)
        self.last_checkpoint = time.monotonic()

    def _resume(self) -> bool:
        if self.checkpoint_dir is None:
            return False
        try:
            loaded = ckpt.load_checkpoint(self.checkpoint_dir)
        except ckpt.CheckpointError as e:
            raise TrainingError(str(e)) from e
        if loaded is None:
            return False
        restored = train_state.restore(
            *loaded,
            self.model,
            self.opt,
            self.loop,
            device=self.device,
            fingerprint=train_state.fingerprint(self.cfg, self.corpus),
            where=str(self.checkpoint_dir),
        )
        self.best_state, self.hidden = restored.best_state, restored.hidden
        try:
            tensors, meta = loaded
            self.average.load_checkpoint(self.model, tensors, meta.get("average"), self.device)
        except ValueError as e:
            raise TrainingError(f"checkpoint in {self.checkpoint_dir} is inconsistent: {e}") from e
        self.elapsed_before = restored.elapsed
        return True

    # ---- the loop ----------------------------------------------------------------------

    def _poll(self) -> None:
        if self.should_stop is None:
            return
        request = self.should_stop()
        if not request:
            return
        if request == STOP_CHECKPOINT and self.checkpoint_dir is not None:
            self.save_checkpoint()
            raise TrainingCancelled(
                f"stopped at step {self.loop.step} with a checkpoint",
                checkpointed=True,
                step=self.loop.step,
            )
        raise TrainingCancelled(f"cancelled at step {self.loop.step}", step=self.loop.step)

    def _scheduled_lr(self) -> float:
        cfg = self.cfg
        lr = cfg.effective_lr * self.loop.lr_factor
        if cfg.warmup_steps and self.loop.step < cfg.warmup_steps:
            lr *= (self.loop.step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine" and self.planned_steps > 1:
            start = cfg.decay_start * (self.planned_steps - 1)
            t = max(0.0, self.loop.step - start) / max(1.0, self.planned_steps - 1 - start)
            t = min(t, 1.0)  # steps a check adds run at the final lr
            lr *= cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return lr

    def _train_step(self) -> None:
        lr = self._scheduled_lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        start = self.loop.batch_pos * self.cfg.bptt
        seq = min(self.cfg.bptt, self.data.shape[1] - 1 - start)
        x = self.data[:, start : start + seq]
        y = self.data[:, start + 1 : start + 1 + seq]
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()
        try:
            with autocast:
                logits, hidden, penalty = train_forward(self.model, x, self.hidden, self.reg)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            self.opt.zero_grad(set_to_none=True)
            # AR/TAR shape the gradient only: the loss reported and checked is the plain one.
            (loss if penalty is None else loss + penalty).backward()
            if self.cfg.effective_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.effective_clip)
            self.opt.step()
            self.average.update(self.model)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            # CPU allocation failures are plain RuntimeErrors; anything else is a bug: re-raise.
            if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
                raise
            raise TrainingError(
                "out of memory: lower batch_size, bptt, hidden_size or the vocabulary size"
            ) from e
        self.hidden = _detach(hidden)
        n_tok = y.numel()
        self.window_loss += loss.detach().double() * n_tok
        self.window_tokens += n_tok
        self.loop.step += 1
        self.loop.batch_pos += 1
        self.session_steps += 1
        self.session_tokens += n_tok
        if self.bar is not None:
            self.bar.update(1)

    def _flush_window(self) -> float | None:
        """Mean loss since the last flush (one device sync), added to the epoch totals."""
        if self.window_tokens == 0:
            return None
        total = float(self.window_loss)
        loss = total / self.window_tokens
        if not math.isfinite(loss) or loss > self.diverged_loss:
            raise TrainingError(
                f"training diverged: the loss became {loss:.4g} at step {self.loop.step} "
                f"(lr {self._lr():g}); lower the learning rate or the clipping threshold"
            )
        self.loop.epoch_loss += total
        self.loop.epoch_tokens += self.window_tokens
        self.window_loss.zero_()
        self.window_tokens = 0
        return loss

    def _lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _train_time(self) -> float:
        # Wall time minus validation. Measured between reports, which wait for the device
        # (the loss is read), so it is right on a GPU too, where steps are queued.
        return time.monotonic() - self.session_start - self.session_eval_s

    def _tokens_per_s(self) -> float:
        t = self._train_time()
        return self.session_tokens / t if t > 0 and self.session_steps else 0.0

    def _progress(self, event: str, loss: float | None) -> dict[str, Any]:
        tps = self._tokens_per_s()
        per_step = self._train_time() / self.session_steps if self.session_steps else 0.0
        return {
            "event": event,
            "step": self.loop.step,
            "total_steps": self.total_steps,
            "epoch": min(self.loop.epoch + 1, self.cfg.epochs),
            "epochs": self.cfg.epochs,
            "loss": loss,
            "ppl": _ppl(loss) if loss is not None else None,
            "lr": self._lr(),
            "tokens_per_s": tps,
            "tokens": self.session_tokens,  # trained on since this session (re)started
            "elapsed_s": self.elapsed_before + time.monotonic() - self.session_start,
            "eta_s": per_step * (self.total_steps - self.loop.step),
            "progress": self.loop.step / self.total_steps if self.total_steps else 1.0,
        }

    def _report(self) -> None:
        loss = self._flush_window()
        info = self._progress("step", loss)
        if self.bar is not None and loss is not None:
            self.bar.set_postfix(
                loss=f"{loss:.3f}", ppl=f"{_ppl(loss):.1f}", tok_s=f"{info['tokens_per_s']:.0f}"
            )
        if self.callback is not None:
            self.callback(info)
        self.last_report = time.monotonic()

    def _end_epoch(self) -> None:
        self._flush_window()
        train_loss = (
            self.loop.epoch_loss / self.loop.epoch_tokens if self.loop.epoch_tokens else math.nan
        )
        tps = self._tokens_per_s()
        t0 = time.monotonic()
        with self.average.applied(self.model):  # once averaging, the average is what counts
            total, count = nll_sum(
                self.model, self.corpus.valid, self.cfg.eval_batch_size, self.cfg.bptt, self._poll
            )
        self.session_eval_s += time.monotonic() - t0
        val_loss = total / count
        if not math.isfinite(val_loss) or val_loss > self.diverged_loss:
            raise TrainingError(f"validation loss became {val_loss} in epoch {self.loop.epoch + 1}")
        val_ppl = _ppl(val_loss)
        entry = {
            "epoch": self.loop.epoch + 1,
            "step": self.loop.step,
            "train_loss": train_loss,
            "train_ppl": _ppl(train_loss),
            "val_ppl": val_ppl,
            "lr": self._lr(),
            "tokens_per_s": tps,
            "seconds": self.elapsed_before + time.monotonic() - self.session_start,
        }
        if self.loop.batch_pos < self.steps_per_epoch:
            entry["partial"] = True  # cut short by max_steps
        if self.check is not None and self.loop.step >= self.check.start * self.planned_steps:
            t0 = time.monotonic()
            with self.average.applied(self.model):
                entry["check"] = score = self.check.evaluate(self.model)
            self.session_eval_s += time.monotonic() - t0
            if score > self.best_check:
                self.best_check, self.check_val_ppl = score, val_ppl
                self.best_state = {k: v.detach().to("cpu").clone() for k, v in self._weights()}
        if self.average.active:
            entry["averaged_steps"] = self.average.count  # this epoch's val scored the average
        self._maybe_start_average(val_ppl)
        if val_ppl < self.loop.best_val * (1 - 1e-4):
            self.loop.best_val = val_ppl
            if self.cfg.keep_best and self.check is None:
                self.best_state = {k: v.detach().to("cpu").clone() for k, v in self._weights()}
            self.loop.bad_epochs = 0
        else:
            self.loop.bad_epochs += 1
            if self.cfg.schedule == "plateau" and self.loop.bad_epochs > self.cfg.patience:
                self.loop.lr_factor *= self.cfg.lr_decay
            if self.cfg.early_stop and self.loop.bad_epochs >= self.cfg.early_stop:
                self.loop.stopped_early = True
        self.loop.history.append(entry)
        self.loop.epoch += 1
        self.loop.batch_pos = 0
        self.hidden = None
        self.loop.epoch_loss, self.loop.epoch_tokens = 0.0, 0
        self.save_checkpoint()  # before the report: an "epoch" event means it is durable
        if self.callback is not None:
            info = self._progress("epoch", train_loss)
            info.update(epoch=entry["epoch"], val_ppl=val_ppl, train_loss=train_loss)
            self.callback(info)

    def _maybe_start_average(self, val_ppl: float) -> None:
        """NT-ASGD's trigger: validation worse than the best before the last asgd_nonmono."""
        n = self.cfg.asgd_nonmono
        if self.cfg.optimizer != "ntasgd" or self.average.active or len(self.loop.history) <= n:
            return
        if val_ppl > min(h["val_ppl"] for h in self.loop.history[:-n]):
            self.average.start(self.model)

    def _weights(self) -> list[tuple[str, Tensor]]:
        if self.average.active:
            return self.average.items()  # the parameters' names: the tied decoder left out
        return [
            (k, v)
            for k, v in self.model.state_dict().items()
            if not (self.model.cfg.tied and k == "decoder.weight")
        ]

    def run(self) -> TrainResult:
        self._resume()
        if self.cfg.progress_bar:
            self.bar = tqdm(
                total=self.total_steps, initial=self.loop.step, unit="step", dynamic_ncols=True
            )
        try:
            while True:
                epoch_done = self.loop.batch_pos >= self.steps_per_epoch
                if epoch_done or (self.loop.step >= self.total_steps and self.loop.batch_pos > 0):
                    self._end_epoch()
                    continue
                if self.loop.step >= self.total_steps or self.loop.stopped_early:
                    if not self._extend_for_check():
                        break
                    continue
                self._poll()
                self._train_step()
                now = time.monotonic()
                if now - self.last_report >= self.cfg.progress_interval_s:
                    self._report()
                if now - self.last_checkpoint >= self.cfg.checkpoint_interval_s:
                    self.save_checkpoint()
        finally:
            if self.bar is not None:
                self.bar.close()
        return self._finish()

    def _extend_for_check(self) -> bool:
        """Plan one more epoch when the check has not passed yet and its extra steps allow."""
        if self.check is None or self.best_check >= 1.0 or self.loop.stopped_early:
            return False
        limit = min(
            self.planned_steps + self.check.extra_steps, self.cfg.epochs * self.steps_per_epoch
        )
        if self.total_steps >= limit:
            return False
        self.total_steps = min(limit, self.total_steps + self.steps_per_epoch)
        return True

    def _finish(self) -> TrainResult:
        if self.best_state is None:
            self.average.copy_to(self.model)
        if self.best_state is not None:
            state = dict(self.best_state)
            if self.model.cfg.tied:
                state["decoder.weight"] = state["embedding.weight"]
            self.model.load_state_dict(state)
        tps = self._tokens_per_s()  # before the final evaluation, which is not training
        self.model.eval()
        last_val = self.loop.history[-1]["val_ppl"] if self.loop.history else None
        val_ppl = self.loop.best_val if self.cfg.keep_best else last_val
        if self.check_val_ppl is not None:
            val_ppl = self.check_val_ppl
        metrics = final_metrics(self.model, self.corpus, self.cfg, val_ppl=val_ppl)
        last = self.loop.history[-1] if self.loop.history else {}
        metrics.update(
            train_loss=last.get("train_loss"),
            steps=self.loop.step,
            epochs=self.loop.epoch,
            tokens_per_s=tps,
            train_seconds=self.elapsed_before + time.monotonic() - self.session_start,
            params=self.model.num_params(),
            device=str(self.device),
            batch_size=self.batch_size,
            stopped_early=self.loop.stopped_early,
        )
        if self.check is not None:
            metrics["check_score"] = self.best_check
        if self.callback is not None:
            info = self._progress("done", last.get("train_loss"))
            info.update(val_ppl=metrics["val_ppl"], progress=1.0, eta_s=0.0)
            self.callback(info)
        return TrainResult(
            model=self.model,
            tokenizer=self.corpus.tokenizer,
            config=self.cfg,
            metrics=metrics,
            history=list(self.loop.history),
        )


def train(
    cfg: TrainConfig,
    corpus: Corpus,
    callback: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], Any] | None = None,
    checkpoint_dir: str | None = None,
    check: HeldOutCheck | None = None,
) -> TrainResult:
    """Train a model on `corpus` (built with `cfg.corpus_options()`). See the module doc.

    `check` (models.train.check) picks the weights kept by a held-out score; its state lives
    in this call only, so it cannot be combined with a resumable `checkpoint_dir`.
    """
    if check is not None and checkpoint_dir is not None:
        raise ValueError("a held-out check cannot be resumed from a checkpoint")
    threads_before = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return Trainer(cfg, corpus, callback, should_stop, checkpoint_dir, check).run()
    finally:
        torch.set_num_threads(threads_before)
