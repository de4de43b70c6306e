"""Weights holding NaN or infinity are refused where weights are loaded: the store and
training checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models import store
from models.checkpoint import CheckpointError, load_checkpoint, nonfinite, save_checkpoint
from models.lm import RNNLM, ModelConfig
from tests.helpers import tiny_tokenizer


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_stored_version_with_non_finite_weights_does_not_load(tmp_path: Path, bad: float) -> None:
    tok = tiny_tokenizer()
    model = RNNLM(ModelConfig("lstm", len(tok.vocab), 8, 8, 1, dropout=0.0, tied=False))
    with torch.no_grad():
        model.rnn.weight_hh_l0[1, 1] = bad
    version = store.save_version(tmp_path, "poisoned", model, tok, {})
    with pytest.raises(store.StoreError, match=r"non-finite .*rnn\.weight_hh_l0"):
        store.load_version(tmp_path, "poisoned", version)


def test_a_checkpoint_with_non_finite_tensors_is_refused(tmp_path: Path) -> None:
    good = {"w": torch.ones(3), "steps": torch.tensor([4])}
    save_checkpoint(tmp_path, good, {"step": 1})
    assert load_checkpoint(tmp_path) is not None
    save_checkpoint(tmp_path, {**good, "m": torch.tensor([0.0, math.nan])}, {"step": 2})
    with pytest.raises(CheckpointError, match=r"non-finite .*'m'"):
        load_checkpoint(tmp_path)
    assert nonfinite({"a": torch.tensor([1.0, math.inf]), "b": torch.zeros(2)}) == ["a"]
