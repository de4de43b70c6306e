import math
from collections import Counter

import pytest
import torch

from models.builtin import AgreementExample, LongRangeExample
from models.evaluate import (
    agreement_accuracy,
    long_range_accuracy,
    next_word_probs,
    nll_sum,
    perplexity,
)
from models.lm import RNNLM, ModelConfig
from models.tokenizer import Tokenizer, Vocab

pytestmark = pytest.mark.numerics


def uniform_model(vocab_size: int, arch: str = "lstm") -> RNNLM:
    model = RNNLM(ModelConfig(arch=arch, vocab_size=vocab_size, embedding_size=8, hidden_size=8))
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    return model.eval()


def biased_model(tokenizer: Tokenizer, favourite: str) -> RNNLM:
    """Predicts `favourite` everywhere: the decoder bias alone decides."""
    model = uniform_model(len(tokenizer.vocab))
    with torch.no_grad():
        model.decoder.bias[tokenizer.vocab.stoi[favourite]] = 5.0
    return model


@pytest.mark.parametrize("n", [2, 3, 17, 100])
@pytest.mark.parametrize("batch_size", [1, 4, 10, 200])
def test_every_target_is_counted_once(n: int, batch_size: int) -> None:
    model = uniform_model(11)
    ids = torch.randint(0, 11, (n,), generator=torch.Generator().manual_seed(n))
    total, count = nll_sum(model, ids, batch_size=batch_size, bptt=5)
    assert count == n - 1
    assert total == pytest.approx((n - 1) * math.log(11), rel=1e-6)


def test_uniform_model_has_perplexity_equal_to_vocab_size() -> None:
    ids = torch.arange(50) % 7
    assert perplexity(uniform_model(7, "gru"), ids) == pytest.approx(7.0, rel=1e-5)


def test_perplexity_rejects_too_short_input_and_restores_training_mode() -> None:
    model = uniform_model(5).train()
    with pytest.raises(ValueError):
        nll_sum(model, torch.tensor([1]))
    nll_sum(model, torch.tensor([1, 2, 3]))
    assert model.training


def test_long_range_and_agreement_accuracy() -> None:
    tok = Tokenizer(Vocab.build(Counter("i speak fluent french greek the key is are".split())))
    examples = [
        LongRangeExample("i speak fluent", "french", 1, "france"),
        LongRangeExample("i speak fluent", "greek", 1, "greece"),
        LongRangeExample("i speak fluent", "french", 3, "france"),
    ]
    res = long_range_accuracy(biased_model(tok, "french"), tok, examples)
    assert res["long_range_acc"] == pytest.approx(2 / 3)
    assert res["long_range_acc_by_gap"] == {"1": 0.5, "3": 1.0}
    agree = [
        AgreementExample("the key", "is", "are", attractor=False),
        AgreementExample("the key", "are", "is", attractor=True),
    ]
    res = agreement_accuracy(biased_model(tok, "is"), tok, agree)
    assert res == {"agreement_acc": 0.5, "agreement_acc_attractor": 0.0}


def test_next_word_probs_match_single_prefix_runs() -> None:
    tok = Tokenizer(Vocab.build(Counter("a b c d e f".split())))
    torch.manual_seed(0)
    model = RNNLM(ModelConfig(arch="gru", vocab_size=len(tok.vocab), hidden_size=8)).eval()
    prefixes = ["a b c d e", "f", "b a"]
    together = next_word_probs(model, tok, prefixes)
    for i, p in enumerate(prefixes):
        alone = next_word_probs(model, tok, [p])[0]
        assert torch.allclose(together[i], alone, atol=1e-6)
        assert together[i].sum().item() == pytest.approx(1.0, abs=1e-5)
