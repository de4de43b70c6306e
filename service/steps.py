"""One forward pass over a batch of independent rows: the unit the batcher schedules.

A row ("step") is some token ids to consume, optionally from a carried recurrent state (a
session, a generation in progress). Rows of any lengths and any mix of fresh and carried
states share one `RNNLM.forward_last` call: ids are right-padded and packed, per-row states are
stacked along the batch dimension of PyTorch's [L, B, H] layout. Everything after the forward
(temperature, log-softmax normaliser, top-k) stays batched on the model's device, so only
k numbers per row cross to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.lm import RNNLM, Hidden, ModelConfig

# One row's recurrent state: [L, H] (a pair of them for the LSTM), on the model's device.
RowState = Tensor | tuple[Tensor, Tensor]


@dataclass(slots=True)
class Step:
    ids: Sequence[int]  # at least one token
    state: RowState | None = None  # None: the zero state (a fresh text)
    top_k: int = 0  # how many (id, prob) pairs to return
    temperature: float = 1.0
    want_state: bool = False  # return the state after the last token (sessions, generation)
    # Chooses a word id from this row's float32 [V] logits on the inference thread (greedy or
    # sampled generation), so the full row never leaves the batch.
    pick: Callable[[Tensor], int] | None = None


@dataclass(slots=True)
class StepResult:
    ids: list[int]  # top-k word ids, most probable first
    probs: list[float]  # their probabilities under softmax(logits / temperature)
    state: RowState | None = None
    picked: int | None = None  # what `pick` chose


def _stack_states(model: RNNLM, steps: Sequence[Step], device: torch.device) -> Hidden | None:
    if all(s.state is None for s in steps):
        return None  # the module's own zero state: no allocation, no copy
    zero = model.init_hidden(1, device)
    if isinstance(zero, tuple):
        zh, zc = zero[0][:, 0], zero[1][:, 0]
        hs = [s.state[0] if s.state is not None else zh for s in steps]
        cs = [s.state[1] if s.state is not None else zc for s in steps]
        return torch.stack(hs, 1), torch.stack(cs, 1)
    z = zero[:, 0]
    return torch.stack([s.state if s.state is not None else z for s in steps], 1)


def _row_state(hidden: Hidden, i: int) -> RowState:
    # Cloned: a view would keep the whole batch's state tensor alive for as long as any one
    # session holds its row.
    if isinstance(hidden, tuple):
        return hidden[0][:, i].clone(), hidden[1][:, i].clone()
    return hidden[:, i].clone()


def padded_ids(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[Tensor, list[int]]:
    """[B, T] ids padded with 0 to the longest row, and each row's length (all >= 1)."""
    lengths = [len(r) for r in rows]
    if min(lengths) < 1:
        raise ValueError("every row needs at least one token")
    width = max(lengths)
    # One tensor built from Python lists: far cheaper than a per-row index_put.
    padded = [list(r) + [0] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.long, device=device), lengths


def run_steps(model: RNNLM, steps: Sequence[Step]) -> list[StepResult]:
    """Run every row in one forward pass; result i belongs to steps[i].

    Call on the inference thread only: this is the torch work.
    """
    if not steps:
        return []
    device = model.decoder.weight.device
    with torch.inference_mode():
        ids, lengths = padded_ids([s.ids for s in steps], device)
        hidden = _stack_states(model, steps, device)
        logits, hidden = model.forward_last(ids, torch.tensor(lengths), hidden)
        logits = logits.float()

        k = min(max(s.top_k for s in steps), logits.shape[-1])
        top_ids: list[list[int]] = [[] for _ in steps]
        top_probs: list[list[float]] = [[] for _ in steps]
        if k > 0:
            temps = [s.temperature for s in steps]
            if any(t != 1.0 for t in temps):
                scaled = logits / torch.tensor(temps, device=device).unsqueeze(1)
            else:
                scaled = logits
            # softmax(x)_i = exp(x_i - logsumexp(x)): no full [B, V] probability tensor.
            norm = torch.logsumexp(scaled, dim=-1, keepdim=True)
            vals, idx = torch.topk(scaled, k, dim=-1)
            top_probs = (vals - norm).exp_().tolist()
            top_ids = idx.tolist()

        out: list[StepResult] = []
        for i, s in enumerate(steps):
            n = min(s.top_k, k)
            result = StepResult(ids=top_ids[i][:n], probs=top_probs[i][:n])
            if s.want_state:
                result.state = _row_state(hidden, i)
            if s.pick is not None:
                result.picked = s.pick(logits[i])
            out.append(result)
        return out


def warm_up(model: RNNLM, batch_sizes: Sequence[int] = (1, 8), length: int = 9) -> None:
    """Run the shapes that serving will see once, so the first real request does not pay for
    oneDNN/cuDNN kernel selection and allocator growth: equal lengths (the fused path) and
    ragged ones (the packed path, with states handed back) at each batch size."""
    vocab = model.cfg.vocab_size
    for b in batch_sizes:
        rows = [[(7 * j + i) % vocab for j in range(length)] for i in range(b)]
        run_steps(model, [Step(r, top_k=5) for r in rows])
        if b > 1:
            ragged = [
                Step(r[: 1 + i % length], top_k=5, want_state=True) for i, r in enumerate(rows)
            ]
            run_steps(model, ragged)


# Below this much work per pass, intra-op threads cost more than they give. The tiny default
# LSTM at batch 64 does ~0.12 GFLOP (3 ms on one core of the shared 2-core VM, over 300 ms
# with two threads when the machine is busy: every kernel waits at the thread pool's barrier
# for a thread the scheduler has parked); the WikiText-2-size LSTM does ~10 GFLOP, matrices
# large enough for every thread to get a real share.
_THREADED_FLOPS = 1e9
_GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def pass_flops(cfg: ModelConfig, rows: int, length: int = 9) -> float:
    """Multiply-adds x 2 of one forward pass over `rows` rows of `length` tokens."""
    width = _GATES[cfg.arch] * cfg.hidden_size
    inputs = cfg.embedding_size + cfg.hidden_size * (cfg.num_layers - 1)
    recurrent = (inputs + cfg.num_layers * cfg.hidden_size) * width
    return 2.0 * rows * (length * recurrent + cfg.hidden_size * cfg.vocab_size)


def intra_op_threads(cfg: ModelConfig, rows: int, most: int) -> int:
    """The torch thread count for this model's passes: 1 for small models, else `most`."""
    return most if pass_flops(cfg, rows) >= _THREADED_FLOPS else 1
