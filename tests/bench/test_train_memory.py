"""The training-memory estimate against a real training's measured peak, and its terms."""

from __future__ import annotations

import pytest

from bench import train_memory
from service.jobs.memory import estimate_training_memory


def test_the_estimate_covers_a_real_trainings_peak_without_wild_overshoot() -> None:
    if not train_memory.WIKITEXT.is_file():
        pytest.skip("WikiText-2 is not in shared/data")
    # Logits dominate here (64 x 64 tokens x 3,000 words): the term a params limit misses.
    measured = train_memory.measure(("lstm", 3_000, 32, 32, 1, 64, 64), steps=2)
    assert measured["peak"] <= measured["estimate"] <= 1.6 * measured["peak"], measured


def test_activations_grow_with_batch_bptt_and_vocab_and_adam_costs_state() -> None:
    def total(**change: object) -> int:
        sizes: dict = dict(
            arch="lstm",
            vocab=10_000,
            embedding=128,
            hidden=128,
            layers=1,
            tied=False,
            batch_size=32,
            bptt=32,
        )
        sizes.update(change)
        return estimate_training_memory(**sizes).activations

    base = total()
    assert total(batch_size=64) > 1.9 * base and total(bptt=64) > 1.9 * base
    assert total(vocab=20_000) > 1.8 * base
    adam = estimate_training_memory("gru", 5000, 64, 64, 2, False, 8, 8, "adam")
    sgd = estimate_training_memory("gru", 5000, 64, 64, 2, False, 8, 8, "sgd")
    assert adam.weights > sgd.weights and adam.activations == sgd.activations
