"""Hidden sizes that give the three kinds the same parameter count.

A layer of a kind with g weight blocks (tanh RNN 1, GRU 3, LSTM 4) and input width d holds
g * H * (d + H + 2) parameters (input and recurrent weights, two biases). At a given width
the LSTM therefore holds 4/3 the GRU's and 4x the RNN's recurrent parameters; the seed's
comparison gives each kind its own width instead, so that all hold about as many.

Two things can be matched. `recurrent` (the default) counts the recurrent layers only: those
are where the kinds differ, and with a 33k-word vocabulary the embedding and decoder hold
~95% of a small model's parameters, which would make any width look "equal". `total` counts
everything (embedding, recurrent layers, decoder), so a wider kind also pays for a wider
decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCKS = {"rnn": 1, "lstm": 4, "gru": 3}
MATCHES = ("recurrent", "total")


@dataclass(frozen=True)
class Size:
    arch: str
    hidden_size: int
    embedding_size: int
    recurrent_params: int
    total_params: int


def recurrent_params(arch: str, embedding_size: int, hidden_size: int, num_layers: int) -> int:
    """Parameters of PyTorch's fused recurrent module (nn.RNN / nn.LSTM / nn.GRU)."""
    g, h = BLOCKS[arch], hidden_size
    first = g * h * (embedding_size + h + 2)
    return first + (num_layers - 1) * g * h * (2 * h + 2)


def size(
    arch: str, vocab: int, embedding_size: int, hidden_size: int, num_layers: int, tied: bool
) -> Size:
    """The parameter counts of one model (tied: the embedding is the decoder, E == H)."""
    emb = hidden_size if tied else embedding_size
    rec = recurrent_params(arch, emb, hidden_size, num_layers)
    total = vocab * emb + rec + vocab + (0 if tied else vocab * hidden_size)
    return Size(arch, hidden_size, emb, rec, total)


def matched_sizes(
    archs: tuple[str, ...],
    reference: str,
    vocab: int,
    embedding_size: int,
    hidden_size: int,
    num_layers: int,
    tied: bool = False,
    match: str = "recurrent",
) -> dict[str, Size]:
    """Each kind's width whose `match` count is closest to `reference`'s at `hidden_size`."""
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")

    def count(s: Size) -> int:
        return s.recurrent_params if match == "recurrent" else s.total_params

    target = count(size(reference, vocab, embedding_size, hidden_size, num_layers, tied))
    out = {}
    for arch in archs:
        # Counts grow with H, so a bisection finds the first width at or over the target;
        # the one below it may be closer.
        lo, hi = 1, max(2, 8 * hidden_size)
        while lo < hi:
            mid = (lo + hi) // 2
            if count(size(arch, vocab, embedding_size, mid, num_layers, tied)) < target:
                lo = mid + 1
            else:
                hi = mid
        options = [size(arch, vocab, embedding_size, h, num_layers, tied) for h in (lo - 1, lo)]
        out[arch] = min(
            (s for s in options if s.hidden_size >= 1), key=lambda s: abs(count(s) - target)
        )
    return out
