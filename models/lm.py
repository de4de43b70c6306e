"""One next-word language model class for the three recurrent kinds (rnn, lstm, gru).

Embedding -> multi-layer fused recurrent module -> dropout -> linear decoder. Tensors are
batch-first: ids are [B, T], logits [B, T, V]. Hidden state follows PyTorch's own layout
([L, B, H], a (h, c) pair for the LSTM) so it can be handed straight back to the fused module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

ARCHS = ("rnn", "lstm", "gru")
Hidden = Tensor | tuple[Tensor, Tensor]


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    embedding_size: int = 128
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    tied: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.tied and self.embedding_size != self.hidden_size:
            raise ValueError("tied weights need embedding_size == hidden_size")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class RNNLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        rnn_cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.arch]
        kwargs: dict[str, Any] = {"nonlinearity": "tanh"} if cfg.arch == "rnn" else {}
        self.rnn = rnn_cls(
            cfg.embedding_size,
            cfg.hidden_size,
            cfg.num_layers,
            batch_first=True,
            # PyTorch applies this between layers only; the output dropout is ours below.
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            **kwargs,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        if cfg.tied:
            self.decoder.weight = self.embedding.weight
        self.reset_parameters()

    @property
    def arch(self) -> str:
        return self.cfg.arch

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if not self.cfg.tied:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        h = self.cfg.hidden_size
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_hh"):
                # Orthogonal recurrent weights keep gradients from exploding or vanishing early:
                # what lets the plain tanh RNN train where the usual uniform init diverges.
                for k in range(p.shape[0] // h):
                    nn.init.orthogonal_(p.data[k * h : (k + 1) * h])
            elif name.startswith("bias"):
                nn.init.zeros_(p)
                if self.cfg.arch == "lstm" and name.startswith("bias_ih"):
                    p.data[h : 2 * h] = 1.0  # forget gate opens: remember by default
                if self.cfg.arch == "gru" and name.startswith("bias_ih"):
                    # Update gate leans to "keep h_prev" (chrono-style): without it a GRU from
                    # PyTorch's init stays blind to long-range links for far longer.
                    p.data[h : 2 * h] = 1.0

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        dev = device if device is not None else self.decoder.weight.device
        shape = (self.cfg.num_layers, batch_size, self.cfg.hidden_size)
        h = torch.zeros(shape, device=dev, dtype=self.decoder.weight.dtype)
        return (h, torch.zeros_like(h)) if self.cfg.arch == "lstm" else h

    def forward(self, ids: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """ids [B, T] -> logits [B, T, V] and the hidden state after the last step."""
        out, hidden = self.rnn(self.drop(self.embedding(ids)), hidden)
        return self.decoder(self.drop(out)), hidden

    def forward_last(
        self, ids: Tensor, lengths: Tensor, hidden: Hidden | None = None
    ) -> tuple[Tensor, Hidden]:
        """Right-padded ids [B, T] with true lengths [B] (all >= 1).

        Returns logits [B, V] at each row's last real token and the hidden state right after
        it. Packing makes the returned state ignore the padding, so a batch of different
        lengths gives each row what it would get alone.
        """
        lengths_cpu = lengths.to("cpu", torch.int64)
        emb = self.drop(self.embedding(ids))
        if bool((lengths_cpu == ids.shape[1]).all()):
            out, hidden = self.rnn(emb, hidden)  # no padding: the fused path, no packing cost
            last = out[:, -1]
        else:
            packed = pack_padded_sequence(emb, lengths_cpu, batch_first=True, enforce_sorted=False)
            _, hidden = self.rnn(packed, hidden)
            # Top layer's final state is the output at each row's last real token.
            last = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]
        return self.decoder(self.drop(last)), hidden

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def column_major_decoder(model: RNNLM) -> bool:
    """Store the decoder weight transposed in memory, on CPU: same values, same [V, H] shape.

    Why: a batch-1 forward of a large-vocabulary model is mostly the decoder's matrix-vector
    product, and the BLAS torch ships (MKL) runs `x @ W.T` about twice as fast when W.T is the
    contiguous one. Measured on the 2-core dev VM, LSTM 2 x 650, vocab 33,278: the decoder
    alone 6.7 -> 3.3 ms, a whole 9-token forward 12.4 -> 9.3 ms; batch 64 unchanged. A tied
    embedding shares the new weight, so no memory is added. Returns whether anything changed.
    CUDA is left alone: cuBLAS takes either layout at the same speed.
    """
    weight = model.decoder.weight
    if weight.device.type != "cpu" or not weight.is_contiguous() or weight.shape[1] == 1:
        return False
    moved = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)
    model.decoder.weight = moved
    if model.cfg.tied:
        model.embedding.weight = moved
    return True
