"""Intra-op threads per model: one for small models, every thread for large ones."""

from __future__ import annotations

from models.lm import ModelConfig
from service.steps import intra_op_threads, pass_flops

TINY = ModelConfig("lstm", 216, 64, 128, 1)  # the embedded default's shape
WIKITEXT = ModelConfig("lstm", 33_278, 650, 650, 2)


def test_the_tiny_default_runs_on_one_thread_and_the_large_model_on_all() -> None:
    assert intra_op_threads(TINY, 64, most=8) == 1
    assert intra_op_threads(WIKITEXT, 64, most=8) == 8
    assert intra_op_threads(WIKITEXT, 64, most=1) == 1


def test_pass_flops_grows_with_rows_layers_and_gates() -> None:
    assert pass_flops(TINY, 64) == 64 * pass_flops(TINY, 1)
    two_layers = ModelConfig("lstm", 216, 64, 128, 2)
    assert pass_flops(two_layers, 1) > pass_flops(TINY, 1)
    assert pass_flops(ModelConfig("rnn", 216, 64, 128, 1), 1) < pass_flops(TINY, 1)
