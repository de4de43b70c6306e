"""bench.train_vs_peer's data slice: both programs see the same text and the full vocabulary."""

from pathlib import Path

from bench.train_vs_peer import format_summary, write_slice


def _words(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split()


def test_the_slice_keeps_the_head_and_every_word(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text(" a b c \n d e \n a f g \n h \n", encoding="utf-8")
    (data / "valid.txt").write_text(" a d \n b \n", encoding="utf-8")
    (data / "test.txt").write_text(" g h \n", encoding="utf-8")
    n = write_slice(data, 4, tmp_path / "out", eval_tokens=3)
    lines = (tmp_path / "out" / "train.txt").read_text(encoding="utf-8").splitlines()
    # The first whole line reaches 4 tokens (3 words + <eos>); then each missing word once.
    assert lines == [" a b c ", " d e f g h "]
    assert n == 4 + 6
    assert set(_words(tmp_path / "out" / "train.txt")) == set(_words(data / "train.txt"))
    assert (tmp_path / "out" / "valid.txt").read_text(encoding="utf-8") == " a d \n"
    assert (tmp_path / "out" / "test.txt").read_text(encoding="utf-8") == " g h \n"


def test_the_summary_pairs_each_peer_run_with_ours() -> None:
    base = {"arch": "lstm", "round": 1, "wall_s": 10.0, "load": 1.0}
    peer = {**base, "tokens_per_s": 100.0, "val_ppl": 300.0, "cpu_s": 20.0}
    ours = {**base, "tokens_per_s": 150.0, "val_ppl": 200.0, "cpu_s": 15.0}
    row = format_summary([peer, ours]).splitlines()[-1]
    assert row.startswith("| lstm | 1 | 100 | 150 | 1.50 | 300.0 | 200.0 | 0.67 |")
    assert "| 0.75 |" in row
