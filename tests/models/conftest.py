"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

from models.builtin import builtin_text
from models.corpus import Corpus, corpus_from_text


@pytest.fixture(scope="module")
def tiny() -> Corpus:
    """150 lines of the built-in corpus: trains in a second, still has every kind of line."""
    lines = builtin_text("longrange", seed=3).splitlines()[:150]
    return corpus_from_text("\n".join(lines) + "\n", valid_fraction=0.15, lowercase=True)
