"""Corpus loading: text -> train/valid/test tensors of token ids plus the tokenizer.

Sources are streamed line by line. Each distinct word gets a provisional id on first sight and
ids go into a compact int64 array, never a Python list of every token; once the training
counts are known the vocabulary is built and the provisional ids are remapped in one tensor
operation. So a file is read and tokenized once.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.builtin import BuiltinCorpus, builtin_corpus
from models.tokenizer import EOS, UNK, Tokenizer, Vocab, tokenize_line

MIN_SPLIT_TOKENS = 2  # a split needs an input and a target


class CorpusError(ValueError):
    """The corpus cannot be used (missing, empty, too small); the message says why."""


@dataclass
class Corpus:
    train: Tensor  # 1-D int64 ids
    valid: Tensor
    test: Tensor | None
    tokenizer: Tokenizer
    description: str
    sha256: str
    # Where it came from, e.g. {"kind": "builtin", "name": "longrange", "seed": 0}.
    source: dict[str, Any] = field(default_factory=dict)
    builtin: BuiltinCorpus | None = None  # evaluation examples for a built-in corpus

    def info(self) -> dict[str, Any]:
        """What meta.json records about the corpus."""
        out: dict[str, Any] = {
            **self.source,
            "description": self.description,
            "sha256": self.sha256,
            "train_tokens": int(self.train.numel()),
            "valid_tokens": int(self.valid.numel()),
            "vocab_size": len(self.tokenizer.vocab),
        }
        if self.test is not None:
            out["test_tokens"] = int(self.test.numel())
        return out


class _Encoder:
    """Provisional ids for every distinct token seen, shared by all splits."""

    def __init__(self, lowercase: bool) -> None:
        self.lowercase = lowercase
        self.ids: dict[str, int] = {UNK: 0, EOS: 1}
        self.hash = hashlib.sha256()

    def encode_lines(self, lines: Iterable[str]) -> array:
        out = array("q")
        ids = self.ids
        self.hash.update(b"\x00split\x00")  # so moving text between splits changes the hash
        for line in lines:
            self.hash.update(line.encode("utf-8", "surrogatepass"))
            for tok in tokenize_line(line, self.lowercase):
                i = ids.get(tok)
                if i is None:
                    i = ids[tok] = len(ids)
                out.append(i)
            if line.endswith("\n"):
                out.append(1)  # <eos>, as in the standard WikiText accounting
        return out


def _file_lines(path: Path) -> Iterator[str]:
    try:
        # Undecodable bytes become U+FFFD rather than failing a whole corpus.
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            for line in f:
                # "\r\n" and "\r" line ends count as one newline each.
                yield line.rstrip("\r\n") + "\n" if line.endswith(("\n", "\r")) else line
    except OSError as e:
        raise CorpusError(f"cannot read {path}: {e.strerror or e}") from e


def _text_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"{path}: no .txt files in this directory")
        return files
    if path.is_file():
        return [path]
    raise CorpusError(f"{path}: no such file or directory")


def _path_lines(path: str | os.PathLike[str]) -> Iterator[str]:
    for f in _text_files(Path(path)):
        yield from _file_lines(f)


def _text_lines(text: str) -> list[str]:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _as_tensor(ids: array) -> Tensor:
    if not ids:
        return torch.empty(0, dtype=torch.int64)
    return torch.frombuffer(ids, dtype=torch.int64).clone()


def _finish(
    enc: _Encoder,
    splits: dict[str, Tensor],
    *,
    max_vocab: int | None,
    min_freq: int,
    description: str,
    source: dict[str, Any],
    builtin: BuiltinCorpus | None = None,
) -> Corpus:
    for name in ("train", "valid"):
        n = int(splits[name].numel())
        if n < MIN_SPLIT_TOKENS:
            raise CorpusError(
                f"the {name} split has {n} tokens; at least {MIN_SPLIT_TOKENS} are needed"
            )
    if splits.get("test") is not None and splits["test"].numel() < MIN_SPLIT_TOKENS:
        raise CorpusError("the test split has fewer than 2 tokens")
    itos_prov = list(enc.ids)  # provisional id -> token (dicts keep insertion order)
    counts_t = torch.bincount(splits["train"], minlength=len(itos_prov))
    counts = Counter({itos_prov[i]: int(n) for i, n in enumerate(counts_t.tolist()) if n})
    vocab = Vocab.build(counts, max_vocab=max_vocab, min_freq=min_freq)
    lut = torch.tensor([vocab.stoi.get(t, 0) for t in itos_prov], dtype=torch.int64)
    return Corpus(
        train=lut[splits["train"]],
        valid=lut[splits["valid"]],
        test=lut[splits["test"]] if splits.get("test") is not None else None,
        tokenizer=Tokenizer(vocab, enc.lowercase),
        description=description,
        sha256=enc.hash.hexdigest(),
        source=source,
        builtin=builtin,
    )


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if not 0.0 < valid_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise CorpusError("valid_fraction must be in (0, 1) and test_fraction in [0, 1)")
    if valid_fraction + test_fraction >= 0.9:
        raise CorpusError("valid_fraction + test_fraction must leave at least 10% for training")


def _held_out(
    enc: _Encoder,
    lines: Iterable[str],
    valid_fraction: float,
    test_fraction: float,
    **kw: Any,
) -> Corpus:
    _check_fractions(valid_fraction, test_fraction)
    ids = _as_tensor(enc.encode_lines(lines))
    if ids.numel() == 0:
        raise CorpusError("the corpus is empty (no words)")
    # Split the token stream, not the lines: a one-line text still gets a validation part.
    n = int(ids.numel())
    n_test = int(n * test_fraction)
    n_valid = max(int(n * valid_fraction), MIN_SPLIT_TOKENS)
    n_train = n - n_valid - n_test
    splits = {
        "train": ids[:n_train],
        "valid": ids[n_train : n_train + n_valid],
        "test": ids[n_train + n_valid :] if n_test else None,
    }
    return _finish(enc, splits, **kw)


def encode_path(path: str | os.PathLike[str], tokenizer: Tokenizer) -> Tensor:
    """Ids of a file or directory under an existing tokenizer (unknown words -> <unk>)."""
    stoi = tokenizer.vocab.stoi
    out = array("q")
    for line in _path_lines(path):
        out.extend(stoi.get(t, 0) for t in tokenize_line(line, tokenizer.lowercase))
        if line.endswith("\n"):
            out.append(tokenizer.vocab.eos_id)
    if len(out) < MIN_SPLIT_TOKENS:
        raise CorpusError(f"{path}: fewer than {MIN_SPLIT_TOKENS} tokens")
    return _as_tensor(out)


def corpus_from_text(
    text: str,
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.0,
    lowercase: bool = False,
    max_vocab: int | None = None,
    min_freq: int = 1,
    description: str | None = None,
) -> Corpus:
    """One text; the last `valid_fraction` (then `test_fraction`) of its tokens are held out."""
    enc = _Encoder(lowercase)
    desc = description or f"inline text ({len(text)} characters)"
    return _held_out(
        enc,
        _text_lines(text),
        valid_fraction,
        test_fraction,
        max_vocab=max_vocab,
        min_freq=min_freq,
        description=desc,
        source={"kind": "text"},
    )


def corpus_from_path(
    path: str | os.PathLike[str],
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.0,
    lowercase: bool = False,
    max_vocab: int | None = None,
    min_freq: int = 1,
    description: str | None = None,
) -> Corpus:
    """A file, or every `.txt` under a directory (sorted by path), with held-out fractions.

    A directory holding `train.txt` and `valid.txt` (and maybe `test.txt`), laid out like
    WikiText-2, is read as those explicit splits instead.
    """
    root = Path(path)
    if (root / "train.txt").is_file() and (root / "valid.txt").is_file():
        test = root / "test.txt"
        return corpus_from_splits(
            root / "train.txt",
            root / "valid.txt",
            test if test.is_file() else None,
            lowercase=lowercase,
            max_vocab=max_vocab,
            min_freq=min_freq,
            description=description or f"{root.name}/{{train,valid,test}}.txt",
        )
    files = _text_files(root)
    enc = _Encoder(lowercase)
    desc = description or (
        f"file {Path(path).name}" if len(files) == 1 else f"{len(files)} files in {Path(path).name}"
    )
    return _held_out(
        enc,
        _path_lines(path),
        valid_fraction,
        test_fraction,
        max_vocab=max_vocab,
        min_freq=min_freq,
        description=desc,
        source={"kind": "path", "files": len(files)},
    )


def _corpus_from_line_splits(
    train: Iterable[str],
    valid: Iterable[str],
    test: Iterable[str] | None,
    *,
    lowercase: bool,
    max_vocab: int | None,
    min_freq: int,
    description: str,
    source: dict[str, Any],
    builtin: BuiltinCorpus | None = None,
) -> Corpus:
    enc = _Encoder(lowercase)
    splits = {
        "train": _as_tensor(enc.encode_lines(train)),
        "valid": _as_tensor(enc.encode_lines(valid)),
        "test": _as_tensor(enc.encode_lines(test)) if test is not None else None,
    }
    return _finish(
        enc,
        splits,
        max_vocab=max_vocab,
        min_freq=min_freq,
        description=description,
        source=source,
        builtin=builtin,
    )


def corpus_from_splits(
    train: str | os.PathLike[str],
    valid: str | os.PathLike[str],
    test: str | os.PathLike[str] | None = None,
    *,
    lowercase: bool = False,
    max_vocab: int | None = None,
    min_freq: int = 1,
    description: str | None = None,
) -> Corpus:
    """Explicit split files (or directories); the vocabulary comes from the training split."""
    names = [Path(p).name for p in (train, valid, test) if p is not None]
    return _corpus_from_line_splits(
        _path_lines(train),
        _path_lines(valid),
        _path_lines(test) if test is not None else None,
        lowercase=lowercase,
        max_vocab=max_vocab,
        min_freq=min_freq,
        description=description or "files " + ", ".join(names),
        source={"kind": "splits"},
    )


def corpus_from_builtin(
    name: str = "longrange",
    seed: int = 0,
    *,
    lowercase: bool = True,
    max_vocab: int | None = None,
    min_freq: int = 1,
) -> Corpus:
    """A built-in corpus with its own train/valid/test texts and evaluation examples."""
    try:
        b = builtin_corpus(name, seed)
    except ValueError as e:
        raise CorpusError(str(e)) from None
    return _corpus_from_line_splits(
        _text_lines(b.train),
        _text_lines(b.valid),
        _text_lines(b.test),
        lowercase=lowercase,
        max_vocab=max_vocab,
        min_freq=min_freq,
        description=f"built-in corpus {name!r} (seed {seed})",
        source={"kind": "builtin", "name": name, "seed": seed},
        builtin=b,
    )
