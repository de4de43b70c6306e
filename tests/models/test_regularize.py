"""The training-only regularisers: what they do while training, and that eval never sees them."""

from __future__ import annotations

import pytest
import torch

from models.corpus import Corpus
from models.gates import inspect
from models.lm import RNNLM, ModelConfig
from models.regularize import (
    Regularization,
    embedding_dropout,
    locked_dropout,
    regularized_forward,
    train_forward,
)
from models.train import TrainConfig, train

pytestmark = pytest.mark.numerics

ARCHS = ("rnn", "lstm", "gru")
ALL_ON = Regularization(
    weight_drop=0.5,
    embed_drop=0.2,
    locked_dropout=True,
    input_dropout=0.3,
    layer_dropout=0.2,
    ar=1.0,
    tar=1.0,
)


def _model(arch: str, layers: int = 2, dropout: float = 0.3) -> RNNLM:
    torch.manual_seed(0)
    return RNNLM(ModelConfig(arch, 29, 12, 12, layers, dropout=dropout, tied=True))


def _ids(rows: int = 3, steps: int = 9) -> torch.Tensor:
    return torch.randint(0, 29, (rows, steps), generator=torch.Generator().manual_seed(1))


def test_locked_dropout_keeps_one_mask_over_time() -> None:
    torch.manual_seed(0)
    x = torch.ones(4, 7, 50)
    y = locked_dropout(x, 0.5)
    assert torch.equal(y, y[:, :1].expand_as(y))  # the same mask at every step
    assert set(y.unique().tolist()) == {0.0, 2.0}  # dropped or scaled by 1 / (1 - p)
    assert not torch.equal(y[0], y[1])  # rows draw their own masks
    assert locked_dropout(x, 0.0) is x


def test_embedding_dropout_drops_whole_words() -> None:
    torch.manual_seed(0)
    weight = torch.randn(40, 6)
    ids = torch.arange(40).repeat(3, 1)  # every word three times
    out = embedding_dropout(weight, ids, 0.5)
    dropped = (out == 0).all(-1)
    assert dropped.any() and not dropped.all()
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])
    kept = ~dropped[0]
    assert torch.allclose(out[0, kept], 2.0 * weight[kept])


@pytest.mark.parametrize("arch", ARCHS)
def test_all_off_is_the_plain_forward_bit_for_bit(arch: str) -> None:
    model = _model(arch).train()
    torch.manual_seed(5)
    plain, plain_h = model(_ids())
    torch.manual_seed(5)
    same, same_h, penalty = train_forward(model, _ids(), None, Regularization())
    assert penalty is None and torch.equal(plain, same)
    # Weight drop alone goes through the fused kernel with the model's own dropout; at
    # p = 0 it draws the same dropout masks in the same order, so it matches bit for bit.
    torch.manual_seed(5)
    via_vf, _, _ = regularized_forward(model, _ids(), None, Regularization(ar=1e-9))
    assert torch.equal(plain, via_vf)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_regulariser_is_off_at_eval(arch: str) -> None:
    model = _model(arch).eval()
    with torch.no_grad():
        plain, _ = model(_ids())
        got, _, penalty = train_forward(model, _ids(), None, ALL_ON)
    assert penalty is None and torch.equal(plain, got)


@pytest.mark.parametrize("arch", ARCHS)
def test_regularised_forward_trains_and_leaves_the_weights_alone(arch: str) -> None:
    model = _model(arch).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(2)
    a, hidden, penalty = regularized_forward(model, _ids(), None, ALL_ON)
    b, _, _ = regularized_forward(model, _ids(), None, ALL_ON)
    assert not torch.equal(a, b)  # fresh masks each forward
    assert penalty.item() > 0.0
    (a.logsumexp(-1).mean() + penalty).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    h = hidden[0] if isinstance(hidden, tuple) else hidden
    assert h.shape == (2, 3, 12)


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_match_the_fused_forward_after_weight_drop_training(arch: str, tiny: Corpus) -> None:
    cfg = TrainConfig(
        arch=arch,
        embedding_size=16,
        hidden_size=16,
        num_layers=2,
        tied=True,
        dropout=0.3,
        weight_drop=0.5,
        locked_dropout=True,
        embed_drop=0.1,
        ar=1.0,
        tar=1.0,
        batch_size=4,
        bptt=10,
        max_steps=8,
        epochs=1,
        lr=1e-2,
        device="cpu",
        num_threads=1,
    )
    model = train(cfg, tiny).model
    assert not model.training
    ids = tiny.valid[:30]
    with torch.no_grad():
        logits, hidden = model(ids[None])
        trace = inspect(model, ids)
    top = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1, 0]
    assert (trace.layers[-1]["hidden"][-1] - top).abs().max().item() < 1e-5
    assert (trace.logits - logits[0, -1]).abs().max().item() < 1e-5
