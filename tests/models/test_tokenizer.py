import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.tokenizer import EOS, UNK, Tokenizer, Vocab, tokenize, tokenize_line

WIKITEXT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wikitext-2"


def test_punctuation_is_split_from_words() -> None:
    assert tokenize("Hello, world! (really?)") == [
        "Hello",
        ",",
        "world",
        "!",
        "(",
        "really",
        "?",
        ")",
    ]
    assert tokenize('She said "yes": 50% off...') == [
        "She",
        "said",
        '"',
        "yes",
        '"',
        ":",
        "50",
        "%",
        "off",
        "...",
    ]


def test_sentence_periods_split_but_abbreviations_stay() -> None:
    text = "I grew up in France. The U.S. Army met Dr. Smith at No. 5 Main St. today."
    assert tokenize(text) == [
        "I",
        "grew",
        "up",
        "in",
        "France",
        ".",
        "The",
        "U.S.",
        "Army",
        "met",
        "Dr.",
        "Smith",
        "at",
        "No.",
        "5",
        "Main",
        "St.",
        "today",
        ".",
    ]


def test_word_internal_punctuation_stays() -> None:
    assert tokenize("it's a well-known e-mail, 3.5 km") == [
        "it's",
        "a",
        "well-known",
        "e-mail",
        ",",
        "3.5",
        "km",
    ]


def test_newlines_become_eos_but_no_trailing_eos_is_added() -> None:
    assert tokenize("a b\nc\n") == ["a", "b", EOS, "c", EOS]
    assert tokenize("i speak fluent") == ["i", "speak", "fluent"]
    assert tokenize("one\n\ntwo") == ["one", EOS, EOS, "two"]
    assert tokenize("") == []


def test_lowercase_is_applied_after_case_decisions() -> None:
    # "Dr." keeps its period because it is capitalised in the input; then it is lowercased.
    assert tokenize("Dr. Who met me. The end", lowercase=True) == [
        "dr.",
        "who",
        "met",
        "me",
        ".",
        "the",
        "end",
    ]
    assert tokenize("<unk> @-@ Big", lowercase=True) == ["<unk>", "@-@", "big"]


def test_control_characters_and_foreign_text_never_raise() -> None:
    assert tokenize("a\x00b\x07c\td") == ["a", "b", "c", "d"]
    assert tokenize("日本語の文。 Ελληνικά, русский!") == [
        "日本語の文",
        "。",
        "Ελληνικά",
        ",",
        "русский",
        "!",
    ]
    assert tokenize("\ud800 lone surrogate") == ["\ud800", "lone", "surrogate"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_tokenizes_into_clean_tokens(text: str) -> None:
    for lowercase in (False, True):
        tokens = tokenize(text, lowercase)
        assert all(tok and not any(ch.isspace() for ch in tok) for tok in tokens)
        assert tokens.count(EOS) >= text.count("\n")


def test_wikitext_lines_pass_through_unchanged() -> None:
    checked = 0
    for split in ("train", "valid", "test"):
        with open(WIKITEXT / f"{split}.txt", encoding="utf-8") as f:
            for line in f:
                assert tokenize_line(line) == line.split(), line
                checked += 1
    assert checked > 40000


def test_vocab_build_orders_by_frequency_and_respects_limits() -> None:
    counts = Counter({"the": 5, "cat": 3, "dog": 3, "emu": 1, UNK: 9})
    v = Vocab.build(counts)
    assert v.itos == [UNK, EOS, "the", "cat", "dog", "emu"]  # ties broken by the word
    assert len(Vocab.build(counts, max_vocab=4)) == 4
    assert Vocab.build(counts, min_freq=2).itos == [UNK, EOS, "the", "cat", "dog"]
    assert v.encode(["cat", "zebra", EOS]) == [3, 0, 1]
    assert v.decode([2, 5]) == ["the", "emu"]
    with pytest.raises(ValueError):
        Vocab.build(counts, max_vocab=1)


def test_tokenizer_reports_unknown_words_in_order_once() -> None:
    tok = Tokenizer(Vocab.build(Counter("the cat sat on the mat".split())), lowercase=True)
    enc = tok.encode("The zebra sat on the Zebra and an emu.")
    assert enc.tokens == ["the", "zebra", "sat", "on", "the", "zebra", "and", "an", "emu", "."]
    assert enc.unknown == ["zebra", "and", "an", "emu", "."]
    assert enc.ids[0] == tok.vocab.stoi["the"] and enc.ids[1] == 0
    assert tok.encode("<unk> cat").unknown == []  # a literal <unk> is not an unknown word


def test_tokenizer_json_round_trip() -> None:
    tok = Tokenizer(Vocab.build(Counter("b a a c".split())), lowercase=True)
    d = json.loads(json.dumps(tok.to_dict()))
    back = Tokenizer.from_dict(d)
    assert back.vocab.itos == tok.vocab.itos and back.lowercase is True
    assert back.encode("a b z").ids == tok.encode("a b z").ids


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"vocab": {"itos": ["a", "b"]}},
        {"vocab": {"itos": [UNK, EOS, "a", "a"]}},
        {"vocab": {"itos": [UNK, EOS, ""]}},
        {"vocab": {"itos": "nope"}},
        {"vocab": {"itos": [UNK, EOS]}, "lowercase": "yes"},
    ],
)
def test_tokenizer_from_bad_json_raises_value_error(bad: dict) -> None:
    with pytest.raises(ValueError):
        Tokenizer.from_dict(bad)


@pytest.mark.parametrize(
    "text", ["Baby.) c", "Ab. c", "No. 5 and no.", "X.,y", "A... b", "U.S..", "'a'"]
)
@pytest.mark.parametrize("lowercase", [False, True])
def test_tokenizing_joined_tokens_again_is_stable(text: str, lowercase: bool) -> None:
    tokens = tokenize(text, lowercase)
    assert tokenize(" ".join(tokens), lowercase) == tokens
