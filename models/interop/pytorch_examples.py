"""Checkpoints of pytorch/examples' `word_language_model` as `SourceModel`s.

Its `main.py` saves the whole `RNNModel` module with `torch.save(model)`: a pickle naming
`model.RNNModel` from the script's own `model.py`. That module is never imported. The pickle
is read with `torch.load(weights_only=True)` and an allow-list of inert stand-in classes
registered under exactly the names such a checkpoint uses; a stand-in only keeps the
attributes the pickle gives it, and no other global can be named. A plain `state_dict` of the
same model is read too. The vocabulary is rebuilt the way the script's `data.Corpus` builds
it: the words of `train.txt`, `valid.txt`, `test.txt` in order of first appearance, each line
split on whitespace and ended by `<eos>`.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from models.tokenizer import EOS

from .source import ImportRefused, SourceModel

SPLITS = ("train.txt", "valid.txt", "test.txt")
SAMPLE_TOKENS = 400  # of valid.txt, for the check against the source
_ARCH_OF_TYPE = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn"}
_REFUSED_TYPES = {
    "RNN_RELU": "an RNN with ReLU units (RNN_RELU): Gatehouse's plain RNN is tanh only",
    "Transformer": "a Transformer (TransformerModel): Gatehouse serves recurrent models only",
}
# What the script's pickles may name besides tensors and containers, as module.qualname.
_PEER_MODEL = "model.RNNModel"
_TORCH_MODULES = (
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.rnn.LSTM",
    "torch.nn.modules.rnn.GRU",
    "torch.nn.modules.rnn.RNN",
)


class Inert:
    """Stand-in for a pickled class: keeps the attributes the pickle sets, runs nothing."""

    pickled_name: ClassVar[str] = ""
    fields: dict[str, Any]

    def __setstate__(self, state: object) -> None:
        self.fields = state if isinstance(state, dict) else {}


def _stand_in(name: str) -> type[Inert]:
    return type(name.rsplit(".", 1)[1], (Inert,), {"pickled_name": name})


_STAND_INS: dict[str, type[Inert]] = {n: _stand_in(n) for n in (_PEER_MODEL, *_TORCH_MODULES)}


def pickled_globals(path: Path) -> set[str]:
    """The globals a torch.save zip file's pickle names, read without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            data = zf.read(member) if member else b""
    except (zipfile.BadZipFile, OSError):
        return set()
    names: set[str] = set()
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name == "GLOBAL":
                names.add(str(arg).replace(" ", ".", 1))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.add(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception as e:  # a malformed pickle: torch.load below gives the precise error
        raise ImportRefused(f"{path}: not a readable torch checkpoint: {e}") from e
    return names


def load_checkpoint(path: Path) -> object:
    """The checkpoint's object: stand-ins for a whole module, tensors for a state_dict."""
    names = pickled_globals(path)
    if "model.TransformerModel" in names:
        raise ImportRefused(f"{path} holds {_REFUSED_TYPES['Transformer']}")
    allowed = [(cls, name) for name, cls in _STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ImportRefused(
            f"{path}: not a pytorch/examples word_language_model checkpoint that can be read "
            f"without running its code ({str(e).splitlines()[0]})"
        ) from e


def corpus_vocabulary(data_dir: Path) -> list[str]:
    """`data.Corpus(data_dir).dictionary.idx2word`, rebuilt."""
    seen: dict[str, None] = {}
    for split in SPLITS:
        path = data_dir / split
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    seen.update(dict.fromkeys(line.split()))
                    seen[EOS] = None
        except FileNotFoundError:
            raise ImportRefused(f"{path}: missing (the data folder needs {SPLITS})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ImportRefused(f"{path}: unreadable: {e}") from e
    return list(seen)


def sample_ids(data_dir: Path, itos: list[str], limit: int = SAMPLE_TOKENS) -> Tensor:
    """The first `limit` tokens of valid.txt, as ids of the source vocabulary."""
    stoi = {w: i for i, w in enumerate(itos)}
    ids: list[int] = []
    with open(data_dir / "valid.txt", encoding="utf-8") as f:
        for line in f:
            ids.extend(stoi[w] for w in [*line.split(), EOS])
            if len(ids) >= limit:
                break
    return torch.tensor(ids[:limit], dtype=torch.long)


def _params(module: object, what: str) -> dict[str, Tensor]:
    fields = module.fields if isinstance(module, Inert) else {}
    params = fields.get("_parameters")
    if not isinstance(params, dict):
        raise ImportRefused(f"the checkpoint's {what} has no parameters")
    return {k: v for k, v in params.items() if isinstance(v, Tensor)}


def from_module(root: Inert, itos: list[str]) -> SourceModel:
    fields = root.fields
    rnn_type = fields.get("rnn_type")
    if rnn_type in _REFUSED_TYPES:
        raise ImportRefused(f"the checkpoint holds {_REFUSED_TYPES[rnn_type]}")
    if rnn_type not in _ARCH_OF_TYPE:
        raise ImportRefused(f"unknown rnn_type {rnn_type!r} (supported: {list(_ARCH_OF_TYPE)})")
    modules = fields.get("_modules")
    if not isinstance(modules, dict) or not all(
        isinstance(modules.get(k), Inert) for k in ("encoder", "rnn", "decoder")
    ):
        raise ImportRefused("the checkpoint's RNNModel lacks its encoder, rnn or decoder")
    rnn = modules["rnn"].fields
    if rnn.get("bidirectional") or rnn.get("proj_size") or rnn.get("bias") is False:
        raise ImportRefused(
            "bidirectional, projected or bias-free recurrent layers are not supported"
        )
    if rnn.get("nonlinearity", "tanh") != "tanh":
        raise ImportRefused(f"the checkpoint holds {_REFUSED_TYPES['RNN_RELU']}")
    encoder = _params(modules["encoder"], "encoder")
    decoder = _params(modules["decoder"], "decoder")
    drop = modules.get("drop")
    dropout = drop.fields.get("p", 0.0) if isinstance(drop, Inert) else 0.0
    if "weight" not in encoder or not {"weight", "bias"} <= set(decoder):
        raise ImportRefused("the checkpoint's encoder or decoder lacks its weights")
    return SourceModel(
        arch=_ARCH_OF_TYPE[rnn_type],
        itos=itos,
        embedding=encoder["weight"].detach(),
        rnn={k: v.detach() for k, v in _params(modules["rnn"], "rnn").items()},
        decoder_weight=decoder["weight"].detach(),
        decoder_bias=decoder["bias"].detach(),
        num_layers=int(rnn.get("num_layers", 1)),
        dropout=float(dropout) if isinstance(dropout, int | float) else 0.0,
        tied=encoder["weight"] is decoder["weight"],
        origin={"format": "pytorch-examples", "checkpoint": "module", "rnn_type": rnn_type},
    )


def arch_from_state(state: dict[str, Tensor], arch: str | None) -> str:
    """The recurrent kind a state_dict's shapes imply; a plain RNN has to be confirmed."""
    w_ih, w_hh = state.get("rnn.weight_ih_l0"), state.get("rnn.weight_hh_l0")
    if w_ih is None or w_hh is None or w_hh.dim() != 2:
        raise ImportRefused("the state_dict has no rnn.weight_ih_l0 / rnn.weight_hh_l0")
    gates = w_ih.shape[0] // max(1, w_hh.shape[1])
    implied = {4: "lstm", 3: "gru", 1: "rnn"}.get(gates)
    if implied is None:
        raise ImportRefused(f"rnn.weight_ih_l0 has {w_ih.shape[0]} rows: not an LSTM/GRU/RNN")
    if arch is not None and arch != implied:
        raise ImportRefused(f"--arch {arch} given, but the weights are those of a {implied}")
    if implied == "rnn" and arch is None:
        raise ImportRefused(
            "a plain RNN's state_dict does not say whether its units are tanh (RNN_TANH) or "
            "ReLU (RNN_RELU); pass --arch rnn if they are tanh (ReLU is not supported)"
        )
    return implied


def from_state_dict(state: dict[str, Tensor], itos: list[str], arch: str | None) -> SourceModel:
    if any(k.startswith(("transformer_encoder.", "pos_encoder.", "input_emb.")) for k in state):
        raise ImportRefused(f"the state_dict holds {_REFUSED_TYPES['Transformer']}")
    if any(k.startswith("encoder.layers.") for k in state):
        raise ImportRefused(f"the state_dict holds {_REFUSED_TYPES['Transformer']}")
    kind = arch_from_state(state, arch)
    for key in ("encoder.weight", "decoder.weight", "decoder.bias"):
        if key not in state:
            raise ImportRefused(f"the state_dict lacks {key!r}")
    rnn = {k[len("rnn.") :]: v for k, v in state.items() if k.startswith("rnn.")}
    layers = sum(1 for k in rnn if k.startswith("weight_ih_l"))
    enc, dec = state["encoder.weight"], state["decoder.weight"]
    return SourceModel(
        arch=kind,
        itos=itos,
        embedding=enc,
        rnn=rnn,
        decoder_weight=dec,
        decoder_bias=state["decoder.bias"],
        num_layers=layers,
        tied=enc.shape == dec.shape and bool(torch.equal(enc, dec)),
        origin={"format": "pytorch-examples", "checkpoint": "state_dict"},
    )


def read(checkpoint: Path, data_dir: Path, arch: str | None = None) -> tuple[SourceModel, Tensor]:
    """The source model of a checkpoint with its corpus folder, and the sample to check on."""
    obj = load_checkpoint(checkpoint)
    itos = corpus_vocabulary(data_dir)
    if isinstance(obj, Inert):
        if obj.pickled_name != _PEER_MODEL:
            raise ImportRefused(f"{checkpoint} holds a bare {obj.pickled_name}, not an RNNModel")
        src = from_module(obj, itos)
        if arch is not None and arch != src.arch:
            raise ImportRefused(f"--arch {arch} given, but the checkpoint holds a {src.arch}")
    elif isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        src = from_state_dict(dict(obj), itos, arch)
    else:
        raise ImportRefused(f"{checkpoint} holds a {type(obj).__name__}, not a model")
    src.origin.update(checkpoint_path=str(checkpoint), data=str(data_dir))
    src.check()
    return src, sample_ids(data_dir, itos)
