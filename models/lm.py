"""One next-word language model class for the three recurrent kinds (rnn, lstm, gru).

Embedding -> multi-layer fused recurrent module -> dropout -> linear decoder. Tensors are
batch-first: ids are [B, T], logits [B, T, V]. Hidden state follows PyTorch's own layout
([L, B, H], a (h, c) pair for the LSTM) so it can be handed straight back to the fused module.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

ARCHS = ("rnn", "lstm", "gru")
Hidden = Tensor | tuple[Tensor, Tensor]


# The half-precision types that serving and the benchmarks accept, by their flag names.
HALF_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
        self.gemm_decoder = False  # see decode() and tune_decoder(); not part of the weights
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
        return self.decode(self.drop(last)), hidden

    def decode(self, h: Tensor) -> Tensor:
        """Logits [B, V] for top-layer states h [B, H]: the decoder, the way `tune_decoder`
        found fastest on this machine (`self.gemm_decoder`; the plain layer until then)."""
        weight = self.decoder.weight
        fp32_cpu = weight.device.type == "cpu" and weight.dtype == torch.float32
        if not (self.gemm_decoder and fp32_cpu and h.dim() == 2):
            return self.decoder(h)
        rows = h.shape[0]
        if rows == 1:
            h = torch.cat([h, h])  # the matrix-vector path is the slow one: take two rows
        out = torch.addmm(self.decoder.bias.unsqueeze(1), weight, h.t())
        return out[:, :rows].t().contiguous()  # softmax and top-k run faster on rows

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def tune_decoder(model: RNNLM, rows: tuple[int, ...] = (1, 16), repeats: int = 5) -> bool:
    """Time the two ways to compute the logits on this CPU and keep the faster for `decode`.

    `h @ W.T` (the plain layer) or `W @ h.T` (a tall matrix times a thin one): the same values
    up to rounding, at very different speeds depending on the BLAS and on whether W fits in
    the cache. Measured on the 2-core dev VM (AMD EPYC, MKL), float32: for V 33,278 x H 650
    (86 MB) the second takes 2.3 instead of 7.0 ms at 1 row, 7.4 instead of 12.3 at 8 rows
    and 23.9 instead of 29.7 at 64, and a whole 9-token forward of the 2 x 650 LSTM at 1 row
    drops from 11.3 to 7.2 ms; for weights of a few MB the plain layer wins. Only float32 on
    CPU is tried: oneDNN's bf16 and cuBLAS are fast as they are. Returns the choice.
    """
    weight = model.decoder.weight
    model.gemm_decoder = False
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return False
    gen = torch.Generator().manual_seed(0)
    states = [torch.randn(n, model.cfg.hidden_size, generator=gen) for n in rows]
    spent = {False: 0.0, True: 0.0}
    with torch.inference_mode():
        for round_ in range(repeats + 1):  # round 0 is a warm-up, not counted
            for choice in spent:
                model.gemm_decoder = choice
                start = time.perf_counter()
                for h in states:
                    model.decode(h)
                if round_ > 0:
                    spent[choice] += time.perf_counter() - start
    model.gemm_decoder = spent[True] < spent[False]
    return model.gemm_decoder
