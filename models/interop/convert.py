"""A `SourceModel` as a Gatehouse version: vocabulary reordered, checked, written.

Gatehouse's vocabulary starts with `<unk>`, `<eos>` (ids 0 and 1); other words keep the
source's order. Embedding and decoder rows move with their words. A special word the source
lacks gets a zero embedding and a decoder row whose logit sits far below any other, so its
probability is exactly 0 in float32 and float16 and every other word keeps its probability.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models import store
from models.lm import RNNLM, ModelConfig
from models.tokenizer import EOS, UNK, Tokenizer, Vocab

from .source import ImportRefused, PlainSource, SourceModel

# exp(-1e4) is 0 in float32; -1e4 also fits float16 (what `--half fp16` serves).
ABSENT_LOGIT = -1.0e4
MAX_LOGPROB_DIFF = 1e-4


class VerificationFailed(ImportRefused):
    """The converted model does not reproduce the source within `MAX_LOGPROB_DIFF`."""


@dataclass
class Converted:
    config: ModelConfig
    weights: dict[str, Tensor]
    tokenizer: Tokenizer
    columns: Tensor  # [V_source]: the Gatehouse id of each source word

    def model(self) -> RNNLM:
        model = RNNLM(self.config)
        model.load_state_dict(self.weights, strict=True)
        return model.eval()


def convert(src: SourceModel, unk: str = UNK, eos: str = EOS, lowercase: bool = False) -> Converted:
    """Reorder `src` into Gatehouse's layout; `unk`/`eos` are the source's names for them."""
    src.check()
    if len(set(src.itos)) != len(src.itos):
        raise ImportRefused("the vocabulary lists a word twice")
    clash = sorted(({UNK, EOS} - {unk, eos}) & set(src.itos))
    if clash:
        raise ImportRefused(
            f"the vocabulary holds {clash} as ordinary words, but Gatehouse reserves them "
            f"(the source's own unknown/end-of-line words were given as {unk!r}, {eos!r})"
        )
    rest = [w for w in src.itos if w not in (unk, eos)]
    itos = [UNK, EOS, *rest]
    try:
        vocab = Vocab(itos)
    except ValueError as e:
        raise ImportRefused(f"vocabulary: {e}") from e
    new_of = {unk: 0, eos: 1} | {w: i + 2 for i, w in enumerate(rest)}
    columns = torch.tensor([new_of[w] for w in src.itos], dtype=torch.long)

    words, emb_size, hidden = len(itos), src.embedding_size, src.hidden_size
    embedding = torch.zeros(words, emb_size)
    decoder_w = torch.zeros(words, hidden)
    decoder_b = torch.full((words,), ABSENT_LOGIT)
    embedding[columns] = src.embedding.float()
    decoder_w[columns] = src.decoder_weight.float()
    decoder_b[columns] = src.decoder_bias.float()

    config = ModelConfig(
        src.arch, words, emb_size, hidden, src.num_layers, float(src.dropout), bool(src.tied)
    )
    weights = {"embedding.weight": embedding, "decoder.bias": decoder_b}
    weights["decoder.weight"] = embedding if src.tied else decoder_w
    weights.update({f"rnn.{k}": v.float().contiguous() for k, v in src.rnn.items()})
    return Converted(config, weights, Tokenizer(vocab, lowercase), columns)


def max_logprob_diff(src: SourceModel, converted: Converted, ids: Tensor) -> float:
    """Largest |log P_source - log P_imported| over every position of `ids` (source ids [T])
    and every word of the source vocabulary."""
    if ids.numel() < 1:
        raise ImportRefused("no sample text to verify the import on")
    with torch.inference_mode():
        expected = PlainSource(src)(ids)
        logits, _ = converted.model()(converted.columns[ids].unsqueeze(0))
        got = torch.log_softmax(logits[0], dim=-1)[:, converted.columns]
    return float((got - expected).abs().max())


def import_source(
    src: SourceModel,
    sample_ids: Tensor,
    model_dir: str | os.PathLike[str],
    name: str,
    meta: dict[str, Any],
    unk: str = UNK,
    eos: str = EOS,
    lowercase: bool = False,
) -> tuple[int, float]:
    """Convert, verify on `sample_ids`, write a version; returns (version, max |Δ|).

    Nothing is written when the check fails.
    """
    converted = convert(src, unk, eos, lowercase)
    diff = max_logprob_diff(src, converted, sample_ids)
    if not diff <= MAX_LOGPROB_DIFF:  # also catches NaN
        raise VerificationFailed(
            f"the imported model differs from the source by {diff:.3g} in log-probability "
            f"(limit {MAX_LOGPROB_DIFF:g}) on {sample_ids.numel()} sample tokens"
        )
    record = dict(meta)
    record["imported"] = {
        **src.origin,
        "max_abs_logprob_diff": diff,
        "sample_tokens": int(sample_ids.numel()),
    }
    version = store.write_version(
        model_dir, name, converted.config, converted.weights, converted.tokenizer, record
    )
    return version, diff
