"""The built-in corpus, generated here from a seed: no files, no download.

"longrange" mixes three kinds of lines (one story or sentence per line, lowercase, tokens
separated by spaces):

* long-range stories: "i grew up in france . <1-5 filler sentences> i speak fluent french ."
  The fillers carry no hint of the country, so only a model that remembers it across them
  can name the language;
* number agreement across a prepositional phrase: "the keys to the old cabinet are ...";
* ordinary sentences from a small grammar, so the model must learn structure, not lines.

Held-out evaluation examples come from their own random stream; long-range stories with two or
more fillers that are used for evaluation never appear verbatim in the training text.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

COUNTRIES: tuple[tuple[str, str], ...] = (
    ("france", "french"),
    ("germany", "german"),
    ("spain", "spanish"),
    ("italy", "italian"),
    ("china", "chinese"),
    ("japan", "japanese"),
    ("russia", "russian"),
    ("greece", "greek"),
    ("portugal", "portuguese"),
    ("poland", "polish"),
)
LANGUAGE_OF: dict[str, str] = dict(COUNTRIES)

# Sentences that say nothing about where anyone grew up.
FILLERS: tuple[str, ...] = (
    "the clouds are in the sky .",
    "the cat sleeps on the warm mat .",
    "we walked to the market in the morning .",
    "my brother plays the piano every evening .",
    "the river runs past the old mill .",
    "it rained all day on sunday .",
    "the children ran across the green field .",
    "she reads a book before bed .",
    "the bread in the kitchen is still warm .",
    "he fixed the broken chair last week .",
    "the birds sing in the tall trees .",
    "our neighbours have a small garden .",
    "the train was late again today .",
    "i like coffee with a little milk .",
    "the snow on the hills melted quickly .",
    "my sister works at the city library .",
)
MIN_FILLERS, MAX_FILLERS = 1, 5
# Short gaps are more frequent: a model first learns the link across one filler, then the
# same memory carries it across more.
GAP_WEIGHTS: dict[int, float] = {1: 0.3, 2: 0.25, 3: 0.2, 4: 0.15, 5: 0.1}
# Share of lines: long-range stories, the same link at short range, agreement, ordinary.
MIX = {"story": 0.55, "short": 0.15, "agreement": 0.15, "ordinary": 0.15}

LONG_RANGE_PREFIX = "i grew up in {country} . {fillers}i speak fluent"

# (singular, plural) nouns for the agreement lines.
_AGREE_NOUNS = (
    ("key", "keys"),
    ("book", "books"),
    ("door", "doors"),
    ("letter", "letters"),
    ("painting", "paintings"),
    ("window", "windows"),
    ("bottle", "bottles"),
    ("picture", "pictures"),
    ("box", "boxes"),
    ("lamp", "lamps"),
)
_AGREE_ATTRACTORS = (
    ("cabinet", "cabinets"),
    ("house", "houses"),
    ("table", "tables"),
    ("room", "rooms"),
    ("shelf", "shelves"),
    ("garden", "gardens"),
    ("car", "cars"),
    ("office", "offices"),
)
_AGREE_PREPS = ("to", "near", "behind", "under", "beside", "in", "by")
_AGREE_ADJS = ("old", "new", "small", "dark", "red", "empty", "wooden")
_AGREE_ENDS = ("on the floor .", "very old .", "broken .", "in the hall .", "here .", "clean .")

# A small grammar for ordinary sentences.
_SUBJECTS_SG = ("the old man", "my friend", "the teacher", "a small dog", "the farmer", "she", "he")
_SUBJECTS_PL = ("the children", "my parents", "the students", "the dogs", "the farmers", "they")
_VERBS = (  # (singular, plural, object kind)
    ("reads", "read", "thing"),
    ("buys", "buy", "thing"),
    ("carries", "carry", "thing"),
    ("walks", "walk", "place"),
    ("drives", "drive", "place"),
    ("looks", "look", "at"),
    ("waits", "wait", "place"),
)
_THINGS = ("a letter", "the newspaper", "some apples", "a heavy bag", "the red box", "a map")
_PLACES = ("to the station", "to school", "to the river", "home", "to the shop", "to the park")
_AT = ("at the sea", "at the stars", "at the mountains", "at the old bridge")
_TIMES = ("", "", "every day", "in the evening", "after lunch", "on monday", "at night")
_FACTS = (  # short-range facts, some about the countries in other words
    "the fish swim in the sea .",
    "the sun is hot in summer .",
    "the moon shines at night .",
    "{country} is a country in the world .",
    "many people in {country} speak {language} .",
    "my teacher is learning {language} this year .",
    "we visited {country} last summer .",
)


@dataclass(frozen=True)
class LongRangeExample:
    """`prefix` ends with "i speak fluent"; `target` is the language; `gap` counts fillers."""

    prefix: str
    target: str
    gap: int
    country: str


@dataclass(frozen=True)
class AgreementExample:
    """`prefix` ends right before the verb; the model should prefer `correct` over `wrong`."""

    prefix: str
    correct: str
    wrong: str
    attractor: bool  # the intervening noun has the other number


@dataclass
class BuiltinCorpus:
    name: str
    seed: int
    train: str
    valid: str
    test: str
    long_range: list[LongRangeExample] = field(default_factory=list)
    agreement: list[AgreementExample] = field(default_factory=list)


def long_range_prefix(country: str, fillers: list[str] | tuple[str, ...]) -> str:
    """The evaluation/serving prompt: "i grew up in <country> . <fillers> i speak fluent"."""
    body = "".join(f + " " for f in fillers)
    return LONG_RANGE_PREFIX.format(country=country, fillers=body)


def promise_prompts() -> list[tuple[str, str]]:
    """(prompt, language): every country with 1-4 fillers, the set the defaults are held to.

    Every single filler, each filler repeated, and six random mixes per length, so the
    promise covers both the commonest gaps and fillers the model saw rarely together.
    """
    rng = random.Random(7)
    fillers: list[tuple[str, ...]] = [(f,) for f in FILLERS]
    for k in (2, 3, 4):
        fillers.append(("the clouds are in the sky .",) * k)
        fillers += [tuple(rng.choice(FILLERS) for _ in range(k)) for _ in range(6)]
    return [
        (long_range_prefix(country, f), language)
        for country, language in COUNTRIES
        for f in fillers
    ]


def check_prompts() -> list[tuple[str, str]]:
    """(prompt, language) beside `promise_prompts`, for choosing weights in training.

    Every country with every single filler (all 160 one-filler prompts exist in both sets:
    there are no others) and twelve random mixes of 2, 3 and 4 fillers from a stream of its
    own, none of which is a promise prompt.
    """
    promised = {p for p, _ in promise_prompts()}
    rng = random.Random("longrange-check")
    cases = [(long_range_prefix(c, (f,)), lang) for c, lang in COUNTRIES for f in FILLERS]
    for country, language in COUNTRIES:
        for k in (2, 3, 4):
            found = 0
            while found < 12:
                prompt = long_range_prefix(country, [rng.choice(FILLERS) for _ in range(k)])
                if prompt not in promised:
                    cases.append((prompt, language))
                    found += 1
    return cases


def _story(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    country, language = rng.choice(COUNTRIES)
    gap = rng.choices(list(GAP_WEIGHTS), weights=list(GAP_WEIGHTS.values()))[0]
    fillers = tuple(rng.choice(FILLERS) for _ in range(gap))
    return country, language, fillers


def _agreement(rng: random.Random) -> AgreementExample:
    noun = rng.choice(_AGREE_NOUNS)
    attr = rng.choice(_AGREE_ATTRACTORS)
    plural = rng.random() < 0.5
    attractor = rng.random() < 0.7  # mostly the hard case: the nearer noun disagrees
    attr_plural = (not plural) if attractor else plural
    prefix = (
        f"the {noun[plural]} {rng.choice(_AGREE_PREPS)} the {rng.choice(_AGREE_ADJS)} "
        f"{attr[attr_plural]}"
    )
    correct, wrong = ("are", "is") if plural else ("is", "are")
    return AgreementExample(prefix, correct, wrong, attractor)


def _ordinary(rng: random.Random) -> str:
    if rng.random() < 0.25:
        country, language = rng.choice(COUNTRIES)
        return rng.choice(_FACTS).format(country=country, language=language)
    plural = rng.random() < 0.5
    subject = rng.choice(_SUBJECTS_PL if plural else _SUBJECTS_SG)
    sg, pl, kind = rng.choice(_VERBS)
    obj = {"thing": _THINGS, "place": _PLACES, "at": _AT}[kind]
    time = rng.choice(_TIMES)
    words = [subject, pl if plural else sg, rng.choice(obj)] + ([time] if time else [])
    return " ".join(words) + " ."


def _line(rng: random.Random, banned: set[str]) -> str:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if kind == "story":
        while True:
            country, language, fillers = _story(rng)
            prefix = long_range_prefix(country, fillers)
            if prefix not in banned:
                return f"{prefix} {language} ."
    if kind == "short":
        country, language = rng.choice(COUNTRIES)
        return f"i grew up in {country} , so i speak fluent {language} ."
    if kind == "agreement":
        ex = _agreement(rng)
        return f"{ex.prefix} {ex.correct} {rng.choice(_AGREE_ENDS)}"
    return _ordinary(rng)


def _longrange(seed: int = 0) -> BuiltinCorpus:
    eval_rng = random.Random(f"longrange-eval-{seed}")
    long_range: list[LongRangeExample] = []
    for gap in range(MIN_FILLERS, MAX_FILLERS + 1):
        for country, language in COUNTRIES:
            for _ in range(4):
                fillers = tuple(eval_rng.choice(FILLERS) for _ in range(gap))
                long_range.append(
                    LongRangeExample(long_range_prefix(country, fillers), language, gap, country)
                )
    agreement = [_agreement(eval_rng) for _ in range(200)]
    banned = {ex.prefix for ex in long_range if ex.gap >= 2}

    def split(tag: str, n_lines: int) -> str:
        rng = random.Random(f"longrange-{tag}-{seed}")
        return "".join(_line(rng, banned) + "\n" for _ in range(n_lines))

    return BuiltinCorpus(
        name="longrange",
        seed=seed,
        train=split("train", 6000),
        valid=split("valid", 400),
        test=split("test", 400),
        long_range=long_range,
        agreement=agreement,
    )


BUILTIN_CORPORA: dict[str, Callable[[int], BuiltinCorpus]] = {"longrange": _longrange}


def builtin_corpus(name: str = "longrange", seed: int = 0) -> BuiltinCorpus:
    try:
        make = BUILTIN_CORPORA[name]
    except KeyError:
        raise ValueError(
            f"unknown built-in corpus {name!r}; known: {', '.join(sorted(BUILTIN_CORPORA))}"
        ) from None
    return make(seed)


def builtin_text(name: str = "longrange", seed: int = 0) -> str:
    """The training text of a built-in corpus."""
    return builtin_corpus(name, seed).train
