"""A stored version as ONNX, checked in onnxruntime against PyTorch before it is kept.

The graph takes `ids` [batch, length] (int64) and the initial state `h0` (plus `c0` for an
LSTM) [layers, batch, hidden], and returns `logits` [batch, length, vocab] and the state after
the last step (`h_n`, `c_n`): batch and length are dynamic. It is traced at batch 2, since a
trace at batch 1 fixes a reshape in the recurrent layers to that batch.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from models.lm import RNNLM

INSTALL_HINT = "pip install 'gatehouse[onnx]'  (or: pip install onnx onnxruntime onnxscript)"
MAX_DIFF = 1e-4
OPSET = 17
# (batch, length) pairs the export is checked at: other shapes than the trace's.
CHECK_SHAPES = ((1, 7), (3, 13))


class OnnxMissing(RuntimeError):
    """onnx or onnxruntime is not installed."""


class _Graph(nn.Module):
    def __init__(self, model: RNNLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, h0: Tensor, c0: Tensor | None = None) -> tuple[Tensor, ...]:
        if c0 is None:
            logits, h = self.model(ids, h0)
            return logits, h
        logits, (h, c) = self.model(ids, (h0, c0))
        return logits, h, c


def require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxMissing(f"{' and '.join(missing)} not installed: {INSTALL_HINT}")


def _names(lstm: bool) -> tuple[list[str], list[str]]:
    if lstm:
        return ["ids", "h0", "c0"], ["logits", "h_n", "c_n"]
    return ["ids", "h0"], ["logits", "h_n"]


def _inputs(model: RNNLM, batch: int, length: int, seed: int) -> tuple[Tensor, ...]:
    cfg = model.cfg
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=gen)
    state = (cfg.num_layers, batch, cfg.hidden_size)
    h0 = torch.randn(state, generator=gen) * 0.5
    if cfg.arch == "lstm":
        return ids, h0, torch.randn(state, generator=gen) * 0.5
    return ids, h0


def export(model: RNNLM, path: Path) -> None:
    """Write `model` (float32, CPU, eval mode) as an ONNX file at `path`."""
    require_onnx()
    graph = _Graph(model.float().cpu().eval()).eval()
    inputs, outputs = _names(model.cfg.arch == "lstm")
    axes = {"ids": {0: "batch", 1: "length"}, "logits": {0: "batch", 1: "length"}}
    axes.update({n: {1: "batch"} for n in inputs[1:] + outputs[1:]})
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notice and its batch-1 caution (our state
        # is an input, which is what that caution asks for).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            _inputs(model, 2, 5, seed=0),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def check(model: RNNLM, path: Path) -> float:
    """Largest |onnxruntime - PyTorch| over every output at `CHECK_SHAPES`."""
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs, _ = _names(model.cfg.arch == "lstm")
    worst = 0.0
    graph = _Graph(model.float().cpu().eval())
    for seed, (batch, length) in enumerate(CHECK_SHAPES, start=1):
        args = _inputs(model, batch, length, seed)
        with torch.inference_mode():
            expected = graph(*args)
        got = session.run(None, {n: a.numpy() for n, a in zip(inputs, args, strict=True)})
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float((torch.from_numpy(g) - e).abs().max()))
    return worst


def export_checked(model: RNNLM, path: Path) -> float:
    """Export to a temp file beside `path`, check it, then rename it into place; returns the
    difference. A failed check leaves nothing at `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        export(model, tmp)
        diff = check(model, tmp)
        if not diff <= MAX_DIFF:
            raise ValueError(f"onnxruntime differs from PyTorch by {diff:.3g} (limit {MAX_DIFF:g})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff
