"""A bare state_dict (safetensors or a weights-only torch file) plus a vocabulary file.

Key layouts understood: pytorch/examples' (`encoder.weight`, `rnn.*`, `decoder.*`) and
Gatehouse's own (`embedding.weight`, `rnn.*`, `decoder.*`); the `rnn.*` names are those of
torch.nn.LSTM / GRU / RNN. A tied model may leave out `decoder.weight`. The vocabulary file
is JSON (a list of words, `{"itos": [...]}` or a Gatehouse `vocab.json`) or plain text, one
word per line, line i being id i.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from models.tokenizer import EOS, tokenize

from .source import ImportRefused, SourceModel

SAMPLE_TOKENS = 256
_EMBEDDING_KEYS = ("encoder.weight", "embedding.weight")


def read_weights(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ImportRefused(
            f"{path}: not a state_dict readable without running code "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    except Exception as e:  # safetensors' own error types for a corrupt file
        raise ImportRefused(f"{path}: unreadable safetensors file: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ImportRefused(f"{path}: expected a mapping of names to tensors")
    return {str(k): v for k, v in state.items()}


def read_vocab(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportRefused(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ImportRefused(f"{path}: unreadable: {e}") from e
    if path.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ImportRefused(f"{path}: invalid JSON: {e}") from e
        if isinstance(obj, dict):
            obj = obj.get("vocab", obj)
            obj = obj.get("itos") if isinstance(obj, dict) else obj
        words = obj
    else:
        words = text.split("\n")
        if words and words[-1] == "":
            words.pop()
    if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
        raise ImportRefused(f"{path}: expected a list of non-empty words")
    return words


def source_model(
    state: dict[str, Tensor], itos: list[str], arch: str, dropout: float = 0.0
) -> SourceModel:
    emb_key = next((k for k in _EMBEDDING_KEYS if k in state), None)
    if emb_key is None:
        raise ImportRefused(f"the weights have none of {_EMBEDDING_KEYS}")
    if "decoder.bias" not in state:
        raise ImportRefused("the weights lack 'decoder.bias'")
    embedding = state[emb_key]
    decoder = state.get("decoder.weight", embedding)
    rnn = {k[len("rnn.") :]: v for k, v in state.items() if k.startswith("rnn.")}
    known = {emb_key, "decoder.weight", "decoder.bias"}
    extra = sorted(k for k in state if k not in known and not k.startswith("rnn."))
    if extra:
        raise ImportRefused(f"the weights hold keys this importer does not know: {extra[:8]}")
    return SourceModel(
        arch=arch,
        itos=itos,
        embedding=embedding,
        rnn=rnn,
        decoder_weight=decoder,
        decoder_bias=state["decoder.bias"],
        num_layers=sum(1 for k in rnn if k.startswith("weight_ih_l")),
        dropout=dropout,
        tied=decoder.shape == embedding.shape and bool(torch.equal(decoder, embedding)),
        origin={"format": "state-dict"},
    )


def sample_ids(
    itos: list[str],
    text: str | None,
    unk: str,
    lowercase: bool,
    eos: str = EOS,
    limit: int = SAMPLE_TOKENS,
) -> Tensor:
    """Ids of `text` in the source vocabulary (each newline as `eos`, unknown words as `unk`
    when it has one, else left out); without a text, a fixed pseudo-random sequence over the
    whole vocabulary."""
    if text is None:
        gen = torch.Generator().manual_seed(0)
        return torch.randint(0, len(itos), (limit,), generator=gen)
    stoi = {w: i for i, w in enumerate(itos)}
    fallback = stoi.get(unk)
    words = [eos if w == EOS else w for w in tokenize(text, lowercase)]
    ids = [stoi.get(w, fallback) for w in words]
    return torch.tensor([i for i in ids if i is not None][:limit], dtype=torch.long)
