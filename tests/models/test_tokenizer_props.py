"""Property-based tests of the tokenizer: any text, no exception, stable results."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from models.tokenizer import EOS, UNK, Tokenizer, Vocab, tokenize

VOCAB = Vocab.build(Counter("the clouds are in sky , . i grew up france 's".split()))
TOK = Tokenizer(VOCAB, lowercase=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.booleans())
def test_tokens_are_words_and_retokenizing_is_stable(text: str, lowercase: bool) -> None:
    tokens = tokenize(text, lowercase)
    assert all(t and not any(c.isspace() for c in t) for t in tokens)
    # Tokenized text passes through unchanged: the WikiText-2 convention.
    assert tokenize(" ".join(tokens), lowercase) == tokens
    if lowercase:
        assert all(t == t.lower() or t in (UNK, EOS) for t in tokens)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_encode_ids_in_range_and_unknown_reported(text: str) -> None:
    enc = TOK.encode(text)
    assert len(enc.ids) == len(enc.tokens)
    assert all(0 <= i < len(VOCAB) for i in enc.ids)
    for token, i in zip(enc.tokens, enc.ids, strict=True):
        if token not in VOCAB.stoi:
            assert i == VOCAB.unk_id and token in enc.unknown
    assert len(set(enc.unknown)) == len(enc.unknown)
