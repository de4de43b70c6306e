"""Training-only regularisers for the recurrent LMs of models.lm, kept out of the model itself.

- weight drop: DropConnect on every layer's hidden-to-hidden matrix (`weight_hh_l*`), one
  mask per forward (so per truncated-BPTT step), shared by all time steps;
- locked (variational) dropout: one mask per row and feature, the same at every time step,
  on the embeddings, between layers and on the top layer's outputs;
- embedding dropout: whole words dropped from the embedding matrix (every use of a dropped
  word in the batch sees zeros), the rest scaled up by 1 / (1 - p);
- AR / TAR: penalties on the top layer's outputs (their size after dropout; their change from
  one step to the next before it).

None of it changes the parameters: the model keeps its plain weights, which eval, serving and
models.gates use, so a model trained this way is inspected exactly. The recurrence still runs
in the fused kernels: the dropped matrices are computed once per forward and handed to the
same `torch._VF` entry points `nn.RNN`/`nn.LSTM`/`nn.GRU` call, one call per layer (locked
dropout between layers needs the layer's output) or one for the whole stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.lm import RNNLM, Hidden

_FUSED = {"rnn": torch._VF.rnn_tanh, "lstm": torch._VF.lstm, "gru": torch._VF.gru}


@dataclass(frozen=True)
class Regularization:
    """The regulariser settings of a run; all zero / off reproduces the plain training step."""

    weight_drop: float = 0.0
    embed_drop: float = 0.0
    locked_dropout: bool = False
    input_dropout: float | None = None  # locked, on the embeddings (None: the model's dropout)
    layer_dropout: float | None = None  # locked, between layers (None: the model's dropout)
    ar: float = 0.0
    tar: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any) -> Regularization:
        """From a models.train TrainConfig (read by attribute: no import of the train code)."""
        return cls(
            weight_drop=cfg.weight_drop,
            embed_drop=cfg.embed_drop,
            locked_dropout=cfg.locked_dropout,
            input_dropout=cfg.input_dropout,
            layer_dropout=cfg.layer_dropout,
            ar=cfg.ar,
            tar=cfg.tar,
        )

    @property
    def active(self) -> bool:
        return bool(
            self.weight_drop or self.embed_drop or self.locked_dropout or self.ar or self.tar
        )


def locked_dropout(x: Tensor, p: float) -> Tensor:
    """x [B, T, F]: one dropout mask per row and feature, reused at every time step."""
    if p <= 0.0:
        return x
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p).div_(1.0 - p)
    return x * mask


def embedding_dropout(weight: Tensor, ids: Tensor, p: float) -> Tensor:
    """Look ids up in `weight` [V, E] with each word's whole row dropped with probability p."""
    if p <= 0.0:
        return F.embedding(ids, weight)
    keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p).div_(1.0 - p)
    return F.embedding(ids, weight * keep)


def _layer_weights(model: RNNLM, layer: int, weight_drop: float) -> list[Tensor]:
    rnn = model.rnn
    w_hh = getattr(rnn, f"weight_hh_l{layer}")
    if weight_drop > 0.0:
        w_hh = F.dropout(w_hh, weight_drop, training=True)
    return [
        getattr(rnn, f"weight_ih_l{layer}"),
        w_hh,
        getattr(rnn, f"bias_ih_l{layer}"),
        getattr(rnn, f"bias_hh_l{layer}"),
    ]


def _fused(
    model: RNNLM, x: Tensor, hidden: Hidden, weights: list[Tensor], layers: int, dropout: float
) -> tuple[Tensor, Hidden]:
    """One call of the fused kernel over `layers` layers with these (possibly dropped) weights."""
    call = _FUSED[model.arch]
    if model.arch == "lstm":
        h, c = hidden  # type: ignore[misc]
        out, h_n, c_n = call(x, (h, c), weights, True, layers, dropout, True, False, True)
        return out, (h_n, c_n)
    out, h_n = call(x, hidden, weights, True, layers, dropout, True, False, True)
    return out, h_n


def _layer_hidden(hidden: Hidden, layer: int) -> Hidden:
    if isinstance(hidden, tuple):
        return (hidden[0][layer : layer + 1], hidden[1][layer : layer + 1])
    return hidden[layer : layer + 1]


def _stack(states: list[Hidden]) -> Hidden:
    if isinstance(states[0], tuple):
        return (torch.cat([s[0] for s in states]), torch.cat([s[1] for s in states]))  # type: ignore[index]
    return torch.cat(states)  # type: ignore[arg-type]


def regularized_forward(
    model: RNNLM, ids: Tensor, hidden: Hidden | None, reg: Regularization
) -> tuple[Tensor, Hidden, Tensor]:
    """The training forward with `reg`: logits [B, T, V], the next hidden state and the AR +
    TAR penalty (a scalar tensor) to add to the loss."""
    cfg = model.cfg
    if hidden is None:
        hidden = model.init_hidden(ids.shape[0], ids.device)
    x = embedding_dropout(model.embedding.weight, ids, reg.embed_drop)
    if reg.locked_dropout:
        x = locked_dropout(x, cfg.dropout if reg.input_dropout is None else reg.input_dropout)
        between = cfg.dropout if reg.layer_dropout is None else reg.layer_dropout
        states = []
        for layer in range(cfg.num_layers):
            weights = _layer_weights(model, layer, reg.weight_drop)
            x, state = _fused(model, x, _layer_hidden(hidden, layer), weights, 1, 0.0)
            states.append(state)
            if layer < cfg.num_layers - 1:
                x = locked_dropout(x, between)
        raw, hidden = x, _stack(states)
        out = locked_dropout(raw, cfg.dropout)
    else:
        # Plain dropout as models.lm applies it; only the recurrent matrices are dropped.
        weights = [
            w for n in range(cfg.num_layers) for w in _layer_weights(model, n, reg.weight_drop)
        ]
        between = cfg.dropout if cfg.num_layers > 1 else 0.0
        raw, hidden = _fused(model, model.drop(x), hidden, weights, cfg.num_layers, between)
        out = model.drop(raw)
    penalty = raw.new_zeros((), dtype=torch.float32)
    if reg.ar:
        penalty = penalty + reg.ar * out.float().pow(2).mean()
    if reg.tar and raw.shape[1] > 1:
        penalty = penalty + reg.tar * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
    return model.decoder(out), hidden, penalty


def train_forward(
    model: RNNLM, ids: Tensor, hidden: Hidden | None, reg: Regularization
) -> tuple[Tensor, Hidden, Tensor | None]:
    """The training step's forward: the model's own when `reg` is all off (bit for bit the
    unregularised run), else `regularized_forward`. The penalty is None when there is none."""
    if not reg.active or not model.training:
        logits, hidden = model(ids, hidden)
        return logits, hidden, None
    return regularized_forward(model, ids, hidden, reg)
