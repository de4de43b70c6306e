"""Exact per-step gate activations of an RNNLM, read from the fused module's own weights.

The fused kernels (`nn.RNN`/`nn.LSTM`/`nn.GRU`) never expose their gates, so this module replays
the same recurrence in plain tensor ops on the same parameters, with PyTorch's gate layout and
order of operations: i, f, g, o for the LSTM; r, z, n for the GRU, where
n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) and h = (1 - z) * n + z * h_prev.

Input projections for all steps are one matrix product per layer; only the recurrence loops.
Eval semantics: dropout is never applied, the state starts at zero.

On CUDA, TF32 (on by default for cuDNN) makes the fused path differ from true float32 by ~1e-4.
Inspection switches TF32 off for its own matrix products, so it reports the float32 values;
the flags are process-wide, so they are restored afterwards and only touched on CUDA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from models.lm import RNNLM

GATE_KEYS: dict[str, tuple[str, ...]] = {
    "rnn": ("hidden",),
    "lstm": ("input", "forget", "candidate", "output", "cell", "hidden"),
    "gru": ("reset", "update", "candidate", "hidden"),
}
# Sigmoid gates live in [0, 1]; the rest are tanh outputs or (cell) unbounded, where the
# magnitude says more than the sign, so their summary also carries mean |x|.
SIGNED_KEYS = frozenset({"candidate", "cell", "hidden"})


@dataclass(frozen=True)
class GateTrace:
    arch: str
    layers: list[dict[str, Tensor]]  # per layer: key -> [T, H], row t = after token t
    logits: Tensor  # [V], next-word logits from the top layer's last hidden state


@contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _rnn_layer(xw: Tensor, w_hh_t: Tensor, b_hh: Tensor) -> dict[str, Tensor]:
    steps, size = xw.shape[0], w_hh_t.shape[0]
    hs = xw.new_empty(steps, size)
    h = xw.new_zeros(1, size)
    for t in range(steps):
        h = torch.tanh(torch.addmm(b_hh, h, w_hh_t) + xw[t])
        hs[t] = h[0]
    return {"hidden": hs}


def _lstm_layer(xw: Tensor, w_hh_t: Tensor, b_hh: Tensor) -> dict[str, Tensor]:
    steps, size = xw.shape[0], w_hh_t.shape[0]
    acts = xw.new_empty(steps, 4 * size)  # i, f, g, o side by side, as PyTorch lays them out
    cs = xw.new_empty(steps, size)
    hs = xw.new_empty(steps, size)
    h = xw.new_zeros(1, size)
    c = xw.new_zeros(1, size)
    for t in range(steps):
        g = torch.addmm(b_hh, h, w_hh_t).add_(xw[t])
        i, f, cand, o = g.chunk(4, 1)
        i, f, cand, o = i.sigmoid_(), f.sigmoid_(), cand.tanh_(), o.sigmoid_()
        c = (f * c).add_(i * cand)
        h = o * c.tanh()
        acts[t] = g[0]
        cs[t] = c[0]
        hs[t] = h[0]
    i, f, cand, o = acts.chunk(4, 1)
    return {
        "input": i.contiguous(),
        "forget": f.contiguous(),
        "candidate": cand.contiguous(),
        "output": o.contiguous(),
        "cell": cs,
        "hidden": hs,
    }


def _gru_layer(xw: Tensor, w_hh_t: Tensor, b_hh: Tensor) -> dict[str, Tensor]:
    steps, size = xw.shape[0], w_hh_t.shape[0]
    rs, zs, ns, hs = (xw.new_empty(steps, size) for _ in range(4))
    h = xw.new_zeros(1, size)
    for t in range(steps):
        hw = torch.addmm(b_hh, h, w_hh_t)
        x_r, x_z, x_n = xw[t : t + 1].chunk(3, 1)
        h_r, h_z, h_n = hw.chunk(3, 1)
        r = (h_r + x_r).sigmoid_()
        z = (h_z + x_z).sigmoid_()
        n = (x_n + h_n * r).tanh_()
        h = (h - n).mul_(z).add_(n)  # (1 - z) * n + z * h_prev, in PyTorch's arithmetic order
        rs[t], zs[t], ns[t], hs[t] = r[0], z[0], n[0], h[0]
    return {"reset": rs, "update": zs, "candidate": ns, "hidden": hs}


_LAYER_FNS = {"rnn": _rnn_layer, "lstm": _lstm_layer, "gru": _gru_layer}


@torch.no_grad()
def inspect(model: RNNLM, ids: Tensor) -> GateTrace:
    """Gate activations for the token ids `ids` [T] (T >= 1) from a zero initial state."""
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"ids must be a non-empty 1-D tensor, got shape {tuple(ids.shape)}")
    arch = model.cfg.arch
    rnn = model.rnn
    device = model.decoder.weight.device
    layer_fn = _LAYER_FNS[arch]
    layers: list[dict[str, Tensor]] = []
    with _exact_float32(device):
        x = model.embedding(ids.to(device))  # dropout is the identity in eval semantics
        for k in range(model.cfg.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{k}")
            w_hh = getattr(rnn, f"weight_hh_l{k}")
            b_ih = getattr(rnn, f"bias_ih_l{k}")
            b_hh = getattr(rnn, f"bias_hh_l{k}")
            xw = torch.addmm(b_ih, x, w_ih.t())  # every step's input projection at once
            states = layer_fn(xw, w_hh.t(), b_hh)
            layers.append(states)
            x = states["hidden"]
        logits = model.decode(x[-1])
    return GateTrace(arch=arch, layers=layers, logits=logits)


def summary(trace: GateTrace) -> dict[str, list[dict[str, object]]]:
    """Per layer and key: mean and the fractions below 0.1 / above 0.9 (saturation, Karpathy
    et al. 2015); candidate, cell and hidden also get mean |x|."""
    out: list[dict[str, object]] = []
    for index, states in enumerate(trace.layers):
        gates: dict[str, dict[str, float]] = {}
        for key, values in states.items():
            v = values.detach().float()
            stats = {
                "mean": v.mean().item(),
                "frac_below_0_1": (v < 0.1).float().mean().item(),
                "frac_above_0_9": (v > 0.9).float().mean().item(),
            }
            if key in SIGNED_KEYS:
                stats["mean_abs"] = v.abs().mean().item()
            gates[key] = stats
        out.append({"layer": index, "gates": gates})
    return {"layers": out}
