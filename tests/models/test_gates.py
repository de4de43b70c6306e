"""The step-by-step gate path against the fused PyTorch module it mirrors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models.gates import GATE_KEYS, GateTrace, inspect, summary
from models.lm import RNNLM, ModelConfig

pytestmark = pytest.mark.numerics

ARCHS = ("rnn", "lstm", "gru")
TOL = 1e-5
VOCAB, EMB, HID, LAYERS, STEPS = 37, 12, 16, 3, 25


def _model(arch: str, seed: int = 0) -> RNNLM:
    torch.manual_seed(seed)
    model = RNNLM(ModelConfig(arch, VOCAB, EMB, HID, LAYERS, dropout=0.4))
    with torch.no_grad():
        # The lm init zeroes most biases; random ones exercise every term of the equations.
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _ids(seed: int = 1, steps: int = STEPS) -> Tensor:
    return torch.randint(0, VOCAB, (steps,), generator=torch.Generator().manual_seed(seed))


def _fused_stepwise(model: RNNLM, ids: Tensor) -> list[Tensor | tuple[Tensor, Tensor]]:
    """State of every layer after each token, from the fused module fed one token at a time."""
    states = []
    hidden = None
    with torch.no_grad():
        for t in range(ids.numel()):
            _, hidden = model(ids[t : t + 1][None], hidden)
            states.append(hidden)
    return states


def _maxdiff(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("arch", ARCHS)
def test_keys_and_shapes(arch: str) -> None:
    trace = inspect(_model(arch), _ids())
    assert trace.arch == arch
    assert len(trace.layers) == LAYERS
    for layer in trace.layers:
        assert tuple(layer) == GATE_KEYS[arch]
        for values in layer.values():
            assert values.shape == (STEPS, HID)
            assert values.dtype == torch.float32
    assert trace.logits.shape == (VOCAB,)


@pytest.mark.parametrize("arch", ARCHS)
def test_states_equal_fused_module_every_layer_and_step(arch: str) -> None:
    model, ids = _model(arch), _ids()
    trace = inspect(model, ids)
    for t, state in enumerate(_fused_stepwise(model, ids)):
        h = state[0] if arch == "lstm" else state
        for k in range(LAYERS):
            assert _maxdiff(trace.layers[k]["hidden"][t], h[k, 0]) <= TOL
            if arch == "lstm":
                assert _maxdiff(trace.layers[k]["cell"][t], state[1][k, 0]) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_top_layer_equals_fused_module_on_whole_sequence(arch: str) -> None:
    model, ids = _model(arch), _ids()
    trace = inspect(model, ids)
    with torch.no_grad():
        out, _ = model.rnn(model.embedding(ids[None]))
    assert _maxdiff(trace.layers[-1]["hidden"], out[0]) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_forward_and_forward_last(arch: str) -> None:
    model, ids = _model(arch), _ids()
    trace = inspect(model, ids)
    with torch.no_grad():
        logits_all, _ = model(ids[None])
        logits_last, _ = model.forward_last(ids[None], torch.tensor([STEPS]))
        per_step = model.decoder(trace.layers[-1]["hidden"])
    assert _maxdiff(trace.logits, logits_all[0, -1]) <= TOL
    assert _maxdiff(trace.logits, logits_last[0]) <= TOL
    assert _maxdiff(per_step, logits_all[0]) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_never_applied_even_in_train_mode(arch: str) -> None:
    model, ids = _model(arch), _ids()
    expected = inspect(model, ids)
    model.train()
    got = inspect(model, ids)
    for a, b in zip(expected.layers, got.layers, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])
    assert torch.equal(expected.logits, got.logits)


def _reference_gates(model: RNNLM, ids: Tensor) -> list[dict[str, Tensor]]:
    """Gates in float64 from the textbook equations, fed the fused module's own states."""
    rnn, arch = model.rnn, model.cfg.arch
    fused = _fused_stepwise(model, ids)
    x = model.embedding(ids).detach().double()
    out = []
    for k in range(LAYERS):
        w_ih, w_hh, b_ih, b_hh = (
            getattr(rnn, f"{n}_l{k}").detach().double()
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        hs = torch.stack([(s[0] if arch == "lstm" else s)[k, 0] for s in fused]).double()
        h_prev = torch.cat([torch.zeros(1, HID, dtype=torch.float64), hs[:-1]])
        gi = x @ w_ih.T + b_ih
        gh = h_prev @ w_hh.T + b_hh
        if arch == "lstm":
            i, f, g, o = (gi + gh).chunk(4, 1)
            out.append(
                {
                    "input": i.sigmoid(),
                    "forget": f.sigmoid(),
                    "candidate": g.tanh(),
                    "output": o.sigmoid(),
                }
            )
        elif arch == "gru":
            i_r, i_z, i_n = gi.chunk(3, 1)
            h_r, h_z, h_n = gh.chunk(3, 1)
            r = (i_r + h_r).sigmoid()
            out.append(
                {"reset": r, "update": (i_z + h_z).sigmoid(), "candidate": (i_n + r * h_n).tanh()}
            )
        else:
            out.append({"hidden": (gi + gh).tanh()})
        x = hs
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_equal_reference_equations(arch: str) -> None:
    model, ids = _model(arch), _ids()
    trace = inspect(model, ids)
    with torch.no_grad():
        reference = _reference_gates(model, ids)
    for got, want in zip(trace.layers, reference, strict=True):
        for key, values in want.items():
            assert _maxdiff(got[key], values) <= TOL, key


def test_lstm_cell_equations() -> None:
    trace = inspect(_model("lstm"), _ids())
    for layer in trace.layers:
        c_prev = torch.cat([torch.zeros(1, HID), layer["cell"][:-1]])
        c = layer["forget"] * c_prev + layer["input"] * layer["candidate"]
        assert _maxdiff(layer["cell"], c) <= TOL
        assert _maxdiff(layer["hidden"], layer["output"] * torch.tanh(layer["cell"])) <= TOL


def test_gru_update_equation() -> None:
    trace = inspect(_model("gru"), _ids())
    for layer in trace.layers:
        h_prev = torch.cat([torch.zeros(1, HID), layer["hidden"][:-1]])
        z, n = layer["update"], layer["candidate"]
        assert _maxdiff(layer["hidden"], (1 - z) * n + z * h_prev) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_value_ranges(arch: str) -> None:
    trace = inspect(_model(arch), _ids())
    for layer in trace.layers:
        for key, values in layer.items():
            assert torch.isfinite(values).all()
            if key in ("input", "forget", "output", "reset", "update"):
                assert values.min() >= 0.0 and values.max() <= 1.0, key
            elif key in ("candidate", "hidden"):
                assert values.min() >= -1.0 and values.max() <= 1.0, key


@pytest.mark.parametrize("arch", ARCHS)
def test_single_token(arch: str) -> None:
    model, ids = _model(arch), _ids(steps=1)
    trace = inspect(model, ids)
    with torch.no_grad():
        logits, _ = model(ids[None])
    assert _maxdiff(trace.logits, logits[0, 0]) <= TOL


@pytest.mark.parametrize("bad", [torch.tensor([], dtype=torch.long), torch.zeros(2, 3).long()])
def test_rejects_bad_ids(bad: Tensor) -> None:
    with pytest.raises(ValueError):
        inspect(_model("rnn"), bad)


def test_summary_statistics() -> None:
    gate = torch.tensor([[0.0, 0.05], [0.5, 0.95]])
    hidden = torch.tensor([[-0.5, 0.5], [-1.0, 0.2]])
    trace = GateTrace("gru", [{"update": gate, "hidden": hidden}], torch.zeros(3))
    (layer,) = summary(trace)["layers"]
    assert layer["layer"] == 0
    assert layer["gates"]["update"] == pytest.approx(
        {"mean": 0.375, "frac_below_0_1": 0.5, "frac_above_0_9": 0.25}
    )
    assert layer["gates"]["hidden"] == pytest.approx(
        {"mean": -0.2, "frac_below_0_1": 0.5, "frac_above_0_9": 0.0, "mean_abs": 0.55}
    )


def test_summary_covers_every_layer_and_key() -> None:
    trace = inspect(_model("lstm"), _ids())
    result = summary(trace)
    assert [entry["layer"] for entry in result["layers"]] == list(range(LAYERS))
    for entry in result["layers"]:
        assert tuple(entry["gates"]) == GATE_KEYS["lstm"]
        for stats in entry["gates"].values():
            assert 0.0 <= stats["frac_below_0_1"] <= 1.0
            assert all(isinstance(v, float) for v in stats.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ARCHS)
def test_cuda_matches_cpu_float32_and_restores_tf32_flags(arch: str) -> None:
    model, ids = _model(arch), _ids()
    cpu = inspect(model, ids)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        gpu = inspect(model.cuda(), ids)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = flags[0]
    assert torch.backends.cudnn.allow_tf32 == flags[1]
    for a, b in zip(cpu.layers, gpu.layers, strict=True):
        for key in a:
            assert _maxdiff(a[key], b[key].cpu()) <= TOL, key
    assert _maxdiff(cpu.logits, gpu.logits.cpu()) <= TOL
