import re

import pytest

from models.builtin import (
    BUILTIN_CORPORA,
    COUNTRIES,
    FILLERS,
    MAX_FILLERS,
    MIN_FILLERS,
    builtin_corpus,
    builtin_text,
    long_range_prefix,
)

REQUIRED = {
    "france": "french",
    "germany": "german",
    "spain": "spanish",
    "italy": "italian",
    "china": "chinese",
    "japan": "japanese",
    "russia": "russian",
    "greece": "greek",
}
STORY = re.compile(r"^i grew up in (\w+) \. ((?:[^.]+ \. )+)i speak fluent (\w+) \.$")


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus("longrange", seed=0)


def test_registry_and_determinism(corpus) -> None:
    assert "longrange" in BUILTIN_CORPORA
    again = builtin_corpus("longrange", seed=0)
    assert (again.train, again.valid, again.test) == (corpus.train, corpus.valid, corpus.test)
    assert again.long_range == corpus.long_range and again.agreement == corpus.agreement
    assert builtin_text("longrange", 0) == corpus.train
    assert builtin_text("longrange", 1) != corpus.train
    with pytest.raises(ValueError):
        builtin_corpus("nope")


def test_required_countries_and_filler_pool() -> None:
    assert REQUIRED.items() <= dict(COUNTRIES).items()
    assert "the clouds are in the sky ." in FILLERS
    words = {w for country, language in COUNTRIES for w in (country, language)}
    for filler in FILLERS:
        assert filler.endswith(" .") and not words & set(filler.split()), filler
    assert (MIN_FILLERS, MAX_FILLERS) == (1, 5)


def test_long_range_stories_follow_the_template(corpus) -> None:
    lines = corpus.train.splitlines()
    stories = [m for m in map(STORY.match, lines) if m]
    assert len(stories) > len(lines) // 3
    language = dict(COUNTRIES)
    gaps = set()
    for m in stories:
        country, fillers, lang = m.groups()
        assert language[country] == lang
        sentences = [s + " ." for s in fillers.strip().removesuffix(" .").split(" . ")]
        gaps.add(len(sentences))
        assert all(s in FILLERS for s in sentences), sentences
    assert gaps == set(range(MIN_FILLERS, MAX_FILLERS + 1))
    assert {m.group(1) for m in stories} == set(language)


def test_agreement_lines_in_both_directions(corpus) -> None:
    text = corpus.train
    prep = "(?:to|near|behind|under|beside|in|by)"
    assert re.search(rf"^the \w+s {prep} the \w+ \w+[^s] are ", text, re.M)  # keys ... cabinet
    assert re.search(rf"^the \w+[^s] {prep} the \w+ \w+s is ", text, re.M)  # key ... cabinets
    assert all(ex.correct != ex.wrong for ex in corpus.agreement)
    assert any(ex.attractor for ex in corpus.agreement)
    assert any(not ex.attractor for ex in corpus.agreement)


def test_ordinary_variety_is_not_a_handful_of_lines(corpus) -> None:
    lines = corpus.train.splitlines()
    assert len(set(lines)) > len(lines) // 2


def test_evaluation_examples_are_held_out(corpus) -> None:
    train_lines = set(corpus.train.splitlines())
    assert {ex.gap for ex in corpus.long_range} == set(range(MIN_FILLERS, MAX_FILLERS + 1))
    for ex in corpus.long_range:
        assert ex.prefix.endswith("i speak fluent") and ex.target == dict(COUNTRIES)[ex.country]
        if ex.gap >= 2:
            assert f"{ex.prefix} {ex.target} ." not in train_lines


def test_long_range_prefix_format() -> None:
    assert (
        long_range_prefix("japan", ["the clouds are in the sky ."])
        == "i grew up in japan . the clouds are in the sky . i speak fluent"
    )
