"""The benchmark model: an LSTM of WikiText-2 size (vocab 33,278, 2 x 650), as the peer serves.

Weights are random, as the TorchServe peer's are: serving speed does not depend on what the
weights learned. The vocabulary is WikiText-2's own, so requests are real words.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from models import store
from models.lm import RNNLM, ModelConfig
from models.tokenizer import EOS, Tokenizer, Vocab

REPO = Path(__file__).resolve().parents[1]
WIKITEXT_TRAIN = REPO.parent / "shared" / "data" / "wikitext-2" / "train.txt"
NAME = "bench-lstm"
# 9 tokens, all in the WikiText-2 vocabulary: the size of the peer's requests.
TEXT_9 = "The game was released in Japan in January and"


def wikitext_tokenizer(train: Path = WIKITEXT_TRAIN) -> Tokenizer:
    # WikiText-2 is already tokenized: whitespace splitting is exactly the tokenizer's output.
    counts: Counter[str] = Counter()
    with open(train, encoding="utf-8") as f:
        for line in f:
            counts.update(line.split())
            counts[EOS] += 1
    return Tokenizer(Vocab.build(counts), lowercase=False)


def build(model_dir: Path, train: Path = WIKITEXT_TRAIN, seed: int = 0) -> ModelConfig:
    """Save version 1 of `NAME` in `model_dir`; returns its config."""
    tokenizer = wikitext_tokenizer(train)
    cfg = ModelConfig("lstm", len(tokenizer.vocab), 650, 650, 2, dropout=0.0, tied=False)
    torch.manual_seed(seed)
    model = RNNLM(cfg).eval()
    meta = {"corpus": {"description": "WikiText-2 vocabulary; random weights (benchmark only)"}}
    store.save_version(model_dir, NAME, model, tokenizer, meta)
    return cfg
