"""Word-level tokenizer and vocabulary.

Text is split on whitespace, then punctuation at the edges of a word is split off. Text that is
already tokenized like WikiText-2 (punctuation separated, `<unk>`, `@-@`, `U.S.`, `'s`) comes
out exactly as `line.split()`. Each newline becomes `<eos>`; a text without a trailing newline
gets no trailing `<eos>`, so "i speak fluent" asks for the word after "fluent".
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

UNK = "<unk>"
EOS = "<eos>"

# Kept whole: markers such as <unk>, <eos>, <formula>, and WikiText's @-@ / @,@ / @.@ joiners.
_SPECIAL_RE = re.compile(r"<[A-Za-z_]+>|@.@")
# Opening marks split off the front of a word. Apostrophes and backticks stay: "'s", "'Brien".
_LEAD = frozenset('([{"“‘«¿¡„$£€¥#')
# Closing marks split off the end of a word. "." is decided separately (abbreviations).
_TRAIL = frozenset(",;:!?)]}\"”’»'%…。、，！？；：")
# Words whose trailing period belongs to them. Case-sensitive: "No. 5" vs "the answer is no."
_ABBREVIATIONS = frozenset(
    "Mr Mrs Ms Dr Prof St Mt Jr Sr Rev Gen Col Lt Capt Sgt Cpl Gov Sen Rep Pres Hon "
    "No Nos Nr Op Vol Fig Ch Ed Eds Co Corp Inc Ltd Bros Ave Jan Feb Mar Apr Jun Jul Aug "
    "Sep Sept Oct Nov Dec vs etc al cf ca approx pp sp ssp spp var lit vol fig ed eds".split()
)


def _has_word_char(chunk: str) -> bool:
    return any(ch.isalnum() for ch in chunk)


# In lowercased text only abbreviations that are never ordinary words keep their period.
_ABBREVIATIONS_LOWER = frozenset("mr mrs ms dr prof st jr sr vs etc cf approx pp al".split())


def _keeps_period(stem: str, after: str | None, lowercase: bool) -> bool:
    """Whether a word's trailing '.' is part of it (abbreviation) rather than a sentence end.

    `after` is what follows the period: the next chunk, or punctuation attached behind it.
    """
    if "." in stem:
        return True  # "U.S.", "e.g.", "Ph.D."
    if lowercase:
        return stem in _ABBREVIATIONS_LOWER
    if stem in _ABBREVIATIONS or (len(stem) == 1 and stem.isalpha()):
        return True  # "Dr.", an initial as in "J. Smith"
    # A capitalised word and a period followed by lowercase or a digit is mid-sentence
    # ("Love. Angel. Music. Baby. and ..."): sentences start with a capital.
    return stem[:1].isupper() and after is not None and (after[:1].islower() or after[:1].isdigit())


def _split_chunk(chunk: str, next_chunk: str | None, lowercase: bool, out: list[str]) -> None:
    if chunk.isalnum() or _SPECIAL_RE.fullmatch(chunk) or not _has_word_char(chunk):
        out.append(chunk)  # plain word, marker, or all punctuation ("...", "--", "?!")
        return
    start = 0
    while chunk[start] in _LEAD:
        out.append(chunk[start])
        start += 1
    word = chunk[start:]
    tail: list[str] = []  # split-off punctuation, innermost last
    while True:
        if word[-1] in _TRAIL:
            tail.append(word[-1])
            word = word[:-1]
        elif word.endswith("."):
            stem = word.rstrip(".")
            if len(word) - len(stem) > 1:
                tail.append(word[len(stem) :])  # "wait..." -> "wait", "..."
                word = stem
            elif _keeps_period(stem, tail[-1] if tail else next_chunk, lowercase):
                break
            else:
                tail.append(".")
                word = stem
        else:
            break
        if not _has_word_char(word):
            break
    if word:
        out.append(word)
    out.extend(reversed(tail))


def _clean(text: str) -> str:
    # Control characters (NUL included) act as spaces; newlines are kept for <eos>.
    if text.isprintable():
        return text
    return "".join(ch if ch == "\n" or unicodedata.category(ch) != "Cc" else " " for ch in text)


def tokenize_line(line: str, lowercase: bool = False) -> list[str]:
    """Tokens of one line (no <eos>).

    Lowercasing comes first, so tokenizing the joined tokens again gives the same tokens.
    """
    line = _clean(line)
    chunks = (line.lower() if lowercase else line).split()
    out: list[str] = []
    for i, chunk in enumerate(chunks):
        _split_chunk(chunk, chunks[i + 1] if i + 1 < len(chunks) else None, lowercase, out)
    return out


def tokenize(text: str, lowercase: bool = False) -> list[str]:
    """Tokens of a text; every newline becomes `<eos>` (none is added at the end)."""
    lines = _clean(text).split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        out.extend(tokenize_line(line, lowercase))
        if i + 1 < len(lines):
            out.append(EOS)
    return out


class Vocab:
    """Token <-> id mapping. Id 0 is `<unk>`, id 1 is `<eos>`."""

    UNK = UNK
    EOS = EOS

    def __init__(self, itos: Sequence[str]) -> None:
        itos = list(itos)
        if itos[:2] != [UNK, EOS]:
            raise ValueError(f"vocabulary must start with {UNK!r}, {EOS!r}")
        if not all(isinstance(t, str) and t for t in itos):
            raise ValueError("vocabulary entries must be non-empty strings")
        if len(set(itos)) != len(itos):
            raise ValueError("vocabulary has duplicate entries")
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(itos)}

    @property
    def unk_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    @classmethod
    def build(cls, counts: Counter[str], max_vocab: int | None = None, min_freq: int = 1) -> Vocab:
        """Most frequent tokens first (ties by token, so the result is deterministic).

        `max_vocab` bounds the total size, the two special tokens included.
        """
        if max_vocab is not None and max_vocab < 2:
            raise ValueError("max_vocab must be >= 2 (room for <unk> and <eos>)")
        words = [(t, n) for t, n in counts.items() if n >= min_freq and t not in (UNK, EOS)]
        words.sort(key=lambda tn: (-tn[1], tn[0]))
        if max_vocab is not None:
            words = words[: max_vocab - 2]
        return cls([UNK, EOS] + [t for t, _ in words])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def encode(self, tokens: Iterable[str]) -> list[int]:
        get = self.stoi.get
        return [get(t, 0) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_dict(self) -> dict[str, Any]:
        return {"itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocab:
        itos = d.get("itos") if isinstance(d, dict) else None
        if not isinstance(itos, list):
            raise ValueError("vocabulary JSON needs an 'itos' list")
        return cls(itos)


@dataclass
class Encoded:
    tokens: list[str]
    ids: list[int]
    unknown: list[str] = field(default_factory=list)  # input words mapped to <unk>, unique


class Tokenizer:
    """A vocabulary plus the lowercasing choice it was built with."""

    def __init__(self, vocab: Vocab, lowercase: bool = False) -> None:
        self.vocab = vocab
        self.lowercase = bool(lowercase)

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, self.lowercase)

    def encode(self, text: str) -> Encoded:
        tokens = self.tokenize(text)
        ids = self.vocab.encode(tokens)
        seen: dict[str, None] = {}
        for tok, i in zip(tokens, ids, strict=True):
            if i == 0 and tok != UNK:
                seen.setdefault(tok, None)
        return Encoded(tokens=tokens, ids=ids, unknown=list(seen))

    def decode(self, ids: Iterable[int]) -> list[str]:
        return self.vocab.decode(ids)

    def __len__(self) -> int:
        return len(self.vocab)

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, "lowercase": self.lowercase, "vocab": self.vocab.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        if not isinstance(d, dict) or not isinstance(d.get("vocab"), dict):
            raise ValueError("tokenizer JSON needs a 'vocab' object")
        lowercase = d.get("lowercase", False)
        if not isinstance(lowercase, bool):
            raise ValueError("tokenizer 'lowercase' must be a boolean")
        return cls(Vocab.from_dict(d["vocab"]), lowercase)
