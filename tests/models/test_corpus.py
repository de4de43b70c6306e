from pathlib import Path

import pytest
import torch

from models.corpus import (
    CorpusError,
    corpus_from_builtin,
    corpus_from_path,
    corpus_from_splits,
    corpus_from_text,
    encode_path,
)
from models.tokenizer import EOS

WIKITEXT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wikitext-2"


def _words(corpus, ids: torch.Tensor) -> list[str]:
    return corpus.tokenizer.decode(ids.tolist())


def test_text_corpus_holds_out_the_tail_and_counts_eos_per_line() -> None:
    text = "".join(f"w{i % 7} w{i % 3} .\n" for i in range(100))  # 400 tokens
    c = corpus_from_text(text, valid_fraction=0.1, test_fraction=0.05)
    assert c.train.numel() + c.valid.numel() + c.test.numel() == 400
    assert (c.valid.numel(), c.test.numel()) == (40, 20)
    assert _words(c, c.train[:4]) == ["w0", "w0", ".", EOS]
    assert c.train.dtype == torch.int64 and c.train.dim() == 1
    assert c.sha256 == corpus_from_text(text, valid_fraction=0.1, test_fraction=0.05).sha256


def test_one_line_text_without_newline_still_splits() -> None:
    c = corpus_from_text("a b c d e f g h i j k l m n o p q r s t", valid_fraction=0.2)
    assert (c.train.numel(), c.valid.numel()) == (16, 4)
    assert EOS not in _words(c, c.train)


def test_vocabulary_comes_from_training_part_only() -> None:
    c = corpus_from_text("a a b\n" * 9 + "zebra only here\n", valid_fraction=0.1)
    assert "zebra" not in c.tokenizer.vocab
    assert c.valid.tolist().count(0) == 3  # the held-out words are <unk>


def test_vocabulary_options_are_applied() -> None:
    text = "The the THE cat cat dog\n" * 10
    c = corpus_from_text(text, lowercase=True, min_freq=15, valid_fraction=0.1)
    assert c.tokenizer.vocab.itos == ["<unk>", "<eos>", "the", "cat"]
    assert c.tokenizer.lowercase is True
    assert len(corpus_from_text(text, max_vocab=3).tokenizer.vocab) == 3


def test_file_directory_and_crlf_sources(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"second file\r\nline\r\n")
    (tmp_path / "a.txt").write_bytes(b"first file\n\xff bad byte\n")
    (tmp_path / "skip.md").write_text("not a text file\n")
    c = corpus_from_path(tmp_path, valid_fraction=0.2)
    # Sorted by name (a.txt first); undecodable bytes become U+FFFD; skip.md is ignored.
    assert _words(c, c.train) == (
        ["first", "file", EOS, "\ufffd", "bad", "byte", EOS, "second", "file", EOS]
    )
    assert _words(c, c.valid) == ["<unk>", EOS]  # "line" is only in the held-out part
    single = corpus_from_path(tmp_path / "b.txt", valid_fraction=0.25)
    assert _words(single, single.train) == ["second", "file", EOS]


def test_directory_with_split_files_is_read_as_splits(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a b\n" * 5)
    (tmp_path / "valid.txt").write_text("a c\n")
    c = corpus_from_path(tmp_path)
    assert (c.train.numel(), c.valid.numel(), c.test) == (15, 3, None)
    (tmp_path / "test.txt").write_text("b b\n")
    assert corpus_from_path(tmp_path).test.numel() == 3


def test_explicit_splits_match_standard_wikitext_counts() -> None:
    c = corpus_from_splits(WIKITEXT / "valid.txt", WIKITEXT / "test.txt")
    # The standard token counts of WikiText-2 (words plus one <eos> per line).
    assert c.train.numel() == 217646
    assert c.valid.numel() == 245569
    assert c.test is None


def test_encode_path_uses_an_existing_tokenizer(tmp_path: Path) -> None:
    c = corpus_from_text("a b c\n" * 10)
    f = tmp_path / "x.txt"
    f.write_text("a z c\n")
    assert _words(c, encode_path(f, c.tokenizer)) == ["a", "<unk>", "c", EOS]


@pytest.mark.parametrize(
    "make",
    [
        lambda p: corpus_from_text(""),
        lambda p: corpus_from_text("   \n\t\n"),
        lambda p: corpus_from_text("one"),
        lambda p: corpus_from_path(p / "missing.txt"),
        lambda p: corpus_from_path(p),  # a directory without .txt files
        lambda p: corpus_from_text("a b c", valid_fraction=0.0),
        lambda p: corpus_from_text("a b c", valid_fraction=0.5, test_fraction=0.5),
        lambda p: corpus_from_builtin("nope"),
    ],
)
def test_unusable_corpora_raise_corpus_error(tmp_path: Path, make) -> None:
    with pytest.raises(CorpusError):
        make(tmp_path)


def test_builtin_corpus_has_splits_and_evaluation_examples() -> None:
    c = corpus_from_builtin("longrange", seed=0)
    assert c.test is not None and c.valid.numel() > 1000
    assert c.builtin is not None and c.builtin.long_range and c.builtin.agreement
    assert c.info()["kind"] == "builtin" and c.info()["name"] == "longrange"
    assert corpus_from_builtin(seed=0).sha256 == c.sha256 != corpus_from_builtin(seed=1).sha256
