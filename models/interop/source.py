"""A recurrent language model from outside Gatehouse, as plain tensors in its own word order.

Both importers reduce what they read to a `SourceModel`; `convert` turns it into a Gatehouse
version and `verify` checks the result against the source rebuilt from plain `torch.nn`
layers (Embedding, nn.LSTM / nn.GRU / nn.RNN, Linear; dropout off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

RNN_CLASSES: dict[str, type[nn.Module]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class ImportRefused(Exception):
    """The source cannot be imported as it is; the message says why and what would work."""


@dataclass
class SourceModel:
    """Embedding -> multi-layer recurrent module -> linear decoder, in the source's order.

    `rnn` holds the recurrent module's parameters under torch.nn's own names
    (`weight_ih_l0`, `bias_hh_l1`, ...); `itos[i]` is the word of embedding row i.
    """

    arch: str
    itos: list[str]
    embedding: Tensor
    rnn: dict[str, Tensor]
    decoder_weight: Tensor
    decoder_bias: Tensor
    num_layers: int
    dropout: float = 0.0
    tied: bool = False
    origin: dict[str, object] = field(default_factory=dict)

    @property
    def embedding_size(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.decoder_weight.shape[1])

    def check(self) -> None:
        """Refuse a source whose tensors do not fit together, before anything is built."""
        if self.arch not in RNN_CLASSES:
            raise ImportRefused(f"unsupported recurrent kind {self.arch!r}")
        words = len(self.itos)
        if self.embedding.dim() != 2 or self.embedding.shape[0] != words:
            raise ImportRefused(
                f"the embedding has shape {tuple(self.embedding.shape)}, but the vocabulary "
                f"has {words} words: is it the vocabulary the model was trained with?"
            )
        if tuple(self.decoder_weight.shape[:1]) != (words,) or self.decoder_weight.dim() != 2:
            raise ImportRefused(
                f"the decoder weight has shape {tuple(self.decoder_weight.shape)}, expected "
                f"({words}, hidden size)"
            )
        if tuple(self.decoder_bias.shape) != (words,):
            raise ImportRefused(f"the decoder bias has shape {tuple(self.decoder_bias.shape)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ImportRefused(f"dropout {self.dropout} is outside [0, 1)")
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in self._rnn_module().state_dict().items()}
        got = {k: tuple(v.shape) for k, v in self.rnn.items()}
        if got != expected:
            raise ImportRefused(
                f"the recurrent weights do not match a {self.num_layers}-layer {self.arch} of "
                f"{self.embedding_size} inputs and {self.hidden_size} units: expected "
                f"{expected}, got {got}"
            )
        for name, t in self.tensors().items():
            if not t.dtype.is_floating_point:
                raise ImportRefused(f"{name} has non-float dtype {t.dtype}")
            if not bool(torch.isfinite(t).all()):
                raise ImportRefused(f"{name} holds NaN or infinite values")

    def tensors(self) -> dict[str, Tensor]:
        out = {"embedding": self.embedding, "decoder.weight": self.decoder_weight}
        out["decoder.bias"] = self.decoder_bias
        out.update({f"rnn.{k}": v for k, v in self.rnn.items()})
        return out

    def _rnn_module(self) -> nn.Module:
        kwargs = {"nonlinearity": "tanh"} if self.arch == "rnn" else {}
        return RNN_CLASSES[self.arch](
            self.embedding_size, self.hidden_size, self.num_layers, **kwargs
        )


class PlainSource(nn.Module):
    """The source model rebuilt from plain torch.nn layers, sequence-first as most scripts
    write it: what the imported version is compared against."""

    def __init__(self, src: SourceModel) -> None:
        super().__init__()
        self.encoder = nn.Embedding(len(src.itos), src.embedding_size)
        self.rnn = src._rnn_module()
        self.decoder = nn.Linear(src.hidden_size, len(src.itos))
        with torch.no_grad():
            self.encoder.weight.copy_(src.embedding.float())
            self.decoder.weight.copy_(src.decoder_weight.float())
            self.decoder.bias.copy_(src.decoder_bias.float())
            for name, p in self.rnn.named_parameters():
                p.copy_(src.rnn[name].float())
        self.eval()

    def forward(self, ids: Tensor) -> Tensor:
        """ids [T] -> log-probabilities [T, V] of the next word at each position."""
        out, _ = self.rnn(self.encoder(ids).unsqueeze(1))
        return torch.log_softmax(self.decoder(out.squeeze(1)), dim=-1)
