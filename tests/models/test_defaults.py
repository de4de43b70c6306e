"""The embedded defaults, trained once (about a minute): the long-range example must work."""

import math
from pathlib import Path

import pytest
import torch

from models import store
from models.builtin import promise_prompts
from models.defaults import DEFAULT_NAMES, train_defaults
from models.evaluate import next_word_probs

pytestmark = pytest.mark.numerics


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list, list[str]]:
    model_dir = tmp_path_factory.mktemp("defaults")
    lines: list[str] = []
    saved = train_defaults(model_dir, log=lines.append)
    return model_dir, saved, lines


def test_three_models_are_saved_with_metrics(trained) -> None:
    model_dir, saved, lines = trained
    assert saved == [(name, 1) for name in DEFAULT_NAMES]
    for name, version in saved:
        loaded = store.load_version(model_dir, name, version)
        assert loaded.config.arch == name
        assert math.isfinite(loaded.meta["metrics"]["val_ppl"])
        assert "long_range_acc_by_gap" in loaded.meta["metrics"]
        assert loaded.meta["default_model"] is True
    assert any("step" in line for line in lines) and "ready in" in lines[-1]


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_long_range_language_comes_first_with_a_clear_margin(trained, name: str) -> None:
    model_dir, _, _ = trained
    loaded = store.load_version(model_dir, name)
    cases = promise_prompts()
    probs = next_word_probs(loaded.model, loaded.tokenizer, [p for p, _ in cases])
    stoi = loaded.tokenizer.vocab.stoi
    failures = []
    for (prompt, language), p in zip(cases, probs, strict=True):
        target = p[stoi[language]].item()
        runner_up = torch.cat([p[: stoi[language]], p[stoi[language] + 1 :]]).max().item()
        if not (target > 0.5 and target > 3 * runner_up):
            failures.append((prompt, language, round(target, 3), round(runner_up, 3)))
    assert not failures, failures[:10]


def test_capitalised_text_with_attached_periods_works_too(trained) -> None:
    model_dir, _, _ = trained
    loaded = store.load_version(model_dir, "lstm")
    text = "I grew up in Japan. The clouds are in the sky. I speak fluent"
    probs = next_word_probs(loaded.model, loaded.tokenizer, [text])[0]
    assert loaded.tokenizer.vocab.itos[int(probs.argmax())] == "japanese"
