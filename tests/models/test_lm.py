"""RNNLM: batched last-token prediction, carried state and config validation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.lm import RNNLM, ModelConfig, tune_decoder

pytestmark = pytest.mark.numerics

ARCHS = ("rnn", "lstm", "gru")
TOL = 1e-5
VOCAB = 29


def _model(arch: str, tied: bool, seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    size = 16
    cfg = ModelConfig(arch, VOCAB, size, size if tied else 12, num_layers=2, dropout=0.3, tied=tied)
    model = RNNLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _state_rows(hidden: Tensor | tuple[Tensor, Tensor], row: int) -> list[Tensor]:
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    return [p[:, row] for p in parts]


def _maxdiff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_last_on_padded_batch_equals_each_alone(arch: str, tied: bool) -> None:
    model = _model(arch, tied)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 2, 9, 1])
    ids = torch.randint(1, VOCAB, (4, 9), generator=gen)
    for row, n in enumerate(lengths.tolist()):
        ids[row, n:] = 0  # padding that must not leak into the row's result
    with torch.no_grad():
        logits, hidden = model.forward_last(ids, lengths)
        assert logits.shape == (4, VOCAB)
        for row, n in enumerate(lengths.tolist()):
            alone = ids[row : row + 1, :n]
            one_logits, one_hidden = model.forward_last(alone, torch.tensor([n]))
            full_logits, _ = model(alone)
            assert _maxdiff(logits[row], one_logits[0]) <= TOL
            assert _maxdiff(logits[row], full_logits[0, -1]) <= TOL
            for a, b in zip(_state_rows(hidden, row), _state_rows(one_hidden, 0), strict=True):
                assert _maxdiff(a, b) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_last_continues_from_given_state(arch: str) -> None:
    model = _model(arch, tied=False)
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(1, VOCAB, (2, 4), generator=gen)
    ids = torch.randint(1, VOCAB, (2, 3), generator=gen)
    ids[1, 1:] = 0
    with torch.no_grad():
        _, state = model(prefix)
        logits, _ = model.forward_last(ids, torch.tensor([3, 1]), state)
        whole0, _ = model(torch.cat([prefix[:1], ids[:1]], 1))
        whole1, _ = model(torch.cat([prefix[1:], ids[1:, :1]], 1))
    assert _maxdiff(logits[0], whole0[0, -1]) <= TOL
    assert _maxdiff(logits[1], whole1[0, -1]) <= TOL


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_state_carried_across_calls_equals_one_call(arch: str, tied: bool) -> None:
    model = _model(arch, tied)
    ids = torch.randint(0, VOCAB, (3, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, whole_state = model(ids)
        first, state = model(ids[:, :6])
        second, end_state = model(ids[:, 6:], state)
    assert _maxdiff(torch.cat([first, second], 1), whole) <= TOL
    end_parts = end_state if isinstance(end_state, tuple) else (end_state,)
    whole_parts = whole_state if isinstance(whole_state, tuple) else (whole_state,)
    for a, b in zip(end_parts, whole_parts, strict=True):
        assert _maxdiff(a, b) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_init_hidden_is_the_default_state(arch: str) -> None:
    model = _model(arch, tied=False)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    hidden = model.init_hidden(2)
    for part in hidden if isinstance(hidden, tuple) else (hidden,):
        assert part.shape == (2, 2, 12) and not part.any()
    with torch.no_grad():
        assert torch.equal(model(ids, hidden)[0], model(ids)[0])


def test_eval_is_deterministic_and_train_applies_dropout() -> None:
    model = _model("lstm", tied=True)
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], model(ids)[0])
        model.train()
        assert not torch.equal(model(ids)[0], model(ids)[0])


def test_tying_shares_one_matrix() -> None:
    tied, untied = _model("gru", tied=True), _model("gru", tied=False)
    assert tied.decoder.weight is tied.embedding.weight
    untied_same_sizes = RNNLM(ModelConfig("gru", VOCAB, 16, 16, 2, 0.3, tied=False))
    assert untied_same_sizes.num_params() - tied.num_params() == VOCAB * 16
    assert untied.decoder.weight is not untied.embedding.weight


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("gemm", [False, True])
def test_decode_equals_the_decoder_layer_either_way(rows: int, gemm: bool) -> None:
    model = _model("lstm", tied=True)
    model.gemm_decoder = gemm
    h = torch.randn(rows, model.cfg.hidden_size, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        fast, plain = model.decode(h), model.decoder(h)
    assert fast.shape == plain.shape == (rows, VOCAB) and fast.is_contiguous()
    assert _maxdiff(fast, plain) < TOL
    # Any leading shape other than [B, H] goes through the layer itself.
    assert torch.equal(model.decode(h[None]), model.decoder(h[None]))


def test_tune_decoder_picks_a_way_that_gives_the_same_predictions() -> None:
    model = _model("gru", tied=False)
    ids, lengths = torch.randint(VOCAB, (3, 6)), torch.tensor([6, 2, 4])
    with torch.inference_mode():
        before, _ = model.forward_last(ids, lengths)
        choice = tune_decoder(model, rows=(1, 4), repeats=2)
        after, _ = model.forward_last(ids, lengths)
    assert model.gemm_decoder is choice
    assert _maxdiff(before, after) < TOL
    assert not tune_decoder(model.to(torch.bfloat16))  # only float32 on CPU is tried
    assert model.gemm_decoder is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "transformer"},
        {"tied": True, "embedding_size": 8, "hidden_size": 16},
        {"vocab_size": 0},
        {"embedding_size": 0},
        {"hidden_size": -1},
        {"num_layers": 0},
        {"dropout": 1.0},
        {"dropout": -0.1},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    base = {"arch": "lstm", "vocab_size": 10}
    with pytest.raises(ValueError):
        ModelConfig(**{**base, **kwargs})


def test_config_dict_round_trip_ignores_unknown_keys() -> None:
    cfg = ModelConfig("gru", 50, 32, 32, 3, 0.25, True)
    d = cfg.to_dict()
    assert d == {
        "arch": "gru",
        "vocab_size": 50,
        "embedding_size": 32,
        "hidden_size": 32,
        "num_layers": 3,
        "dropout": 0.25,
        "tied": True,
    }
    assert ModelConfig.from_dict({**d, "created_at": "x", "metrics": {}}) == cfg
