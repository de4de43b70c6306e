"""models.compare and its parts: equal-parameter widths, kernel timings, the written page."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.compare import load_corpus
from models.compare_report import REPORT_FORMAT, gru_verdict, kernels_of, report_data
from models.compare_sizes import matched_sizes, size
from models.compare_speed import measure
from models.lm import ARCHS, RNNLM, ModelConfig

REPO = Path(__file__).resolve().parents[2]
WIKITEXT = REPO / ".." / "shared" / "data" / "wikitext-2"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def wiki_dir(tmp_path_factory) -> Path:
    """Three splits cut from WikiText-2's validation text: a real corpus in a second."""
    lines = (WIKITEXT / "valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    d = tmp_path_factory.mktemp("wiki")
    parts = {"train": lines[:200], "valid": lines[200:240], "test": lines[240:280]}
    for name, chunk in parts.items():
        (d / f"{name}.txt").write_text("".join(chunk), encoding="utf-8")
    return d


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
def test_sizes_count_what_torch_builds(layers: int, tied: bool) -> None:
    for arch in ARCHS:
        s = size(arch, 500, 24, 24 if tied else 40, layers, tied)
        model = RNNLM(ModelConfig(arch, 500, s.embedding_size, s.hidden_size, layers, tied=tied))
        assert s.total_params == model.num_params()
        assert s.recurrent_params == sum(p.numel() for p in model.rnn.parameters())


@pytest.mark.parametrize("match", ["recurrent", "total"])
@pytest.mark.parametrize("hidden,layers", [(200, 2), (650, 2), (128, 1)])
def test_matched_widths_hold_the_lstms_parameters_within_2_percent(
    match: str, hidden: int, layers: int
) -> None:
    sizes = matched_sizes(ARCHS, "lstm", 33278, 200, hidden, layers, match=match)
    key = "recurrent_params" if match == "recurrent" else "total_params"
    target = getattr(sizes["lstm"], key)
    assert sizes["lstm"].hidden_size == hidden
    for s in sizes.values():
        assert abs(getattr(s, key) - target) <= 0.02 * target
    if match == "recurrent":  # fewer weight blocks per unit: a wider layer
        assert sizes["rnn"].hidden_size > sizes["gru"].hidden_size > hidden


def test_matched_sizes_reject_an_unknown_match() -> None:
    with pytest.raises(ValueError):
        matched_sizes(ARCHS, "lstm", 100, 8, 8, 1, match="decoder")


def test_measure_times_every_kind_and_leaves_the_models_as_they_were() -> None:
    models = {a: RNNLM(ModelConfig(a, 50, 8, 8)) for a in ARCHS}
    models["gru"].eval()
    out = measure(models, batch=2, bptt=3, repeats=2)
    for arch, figures in out.items():
        assert set(figures) == {"serve_tokens_per_s", "core_forward_ms", "core_train_ms"}
        assert all(v > 0 for v in figures.values())
        assert all(p.grad is None for p in models[arch].parameters())
    assert models["lstm"].training and not models["gru"].training


def test_the_verdict_follows_the_numbers() -> None:
    lstm = {"arch": "lstm", "core_train_ms": 10.0, "core_forward_ms": 4.0, "tokens_per_s": 100.0}
    fast = {"arch": "gru", "core_train_ms": 8.0, "core_forward_ms": 3.0, "tokens_per_s": 120.0}
    slow = {**fast, "core_train_ms": 12.0, "tokens_per_s": 90.0}
    assert '"GRU is faster" holds' in gru_verdict([lstm, fast])
    assert "(1.25x)" in gru_verdict([lstm, fast])
    assert "does not hold" in gru_verdict([lstm, slow])
    assert "no verdict" in gru_verdict([lstm])


def test_slices_keep_the_full_vocabulary(wiki_dir: Path) -> None:
    args = argparse.Namespace(data=str(wiki_dir), train=None, train_tokens=None, valid_tokens=None)
    options = {"lowercase": False, "max_vocab": None, "min_freq": 1}
    whole = load_corpus(args, options)
    args.train_tokens, args.valid_tokens = 500, 100
    cut = load_corpus(args, options)
    assert cut.train.numel() == 500 and cut.valid.numel() == 100 and cut.test.numel() == 100
    assert cut.train.tolist() == whole.train[:500].tolist()
    assert len(cut.tokenizer.vocab) == len(whole.tokenizer.vocab)


# `gatehouse ARGS` as the console script runs it, from this checkout.
GATEHOUSE = "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))"


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = ["-c", GATEHOUSE, *args[1:]] if args[0] == "gatehouse" else ["-m", *args]
    return subprocess.run(
        [sys.executable, *cmd],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_the_comparison_writes_its_page_end_to_end(wiki_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "comparison.md"
    proc = _run(
        "gatehouse", "compare", "--data", str(wiki_dir), "--budget-s", "0.5",
        "--embedding-size", "8", "--hidden-size", "8", "--batch-size", "4", "--bptt", "8",
        "--longrange-steps", "3", "--report", str(page),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = page.read_text(encoding="utf-8")
    sizes = matched_sizes(ARCHS, "lstm", 10**4, 8, 8, 1)  # widths do not depend on V
    for arch in ARCHS:
        assert f"| {arch} | {sizes[arch].hidden_size} |" in text  # the sizes table
        assert "for 0.5s" in proc.stderr
    assert "## Is the GRU faster?" in text and "GRU is faster" in text
    gap_rows = [line for line in text.splitlines() if line.startswith("| lstm | 0.")]
    assert gap_rows, "long-range accuracy by gap is missing"
    folder = tmp_path / "comparison"
    for name in ("val_ppl_by_epoch.png", "val_ppl_by_seconds.png", "long_range_by_gap.png"):
        assert (folder / name).read_bytes()[:8] == PNG
        assert f"(comparison/{name})" in text
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert data["format"] == REPORT_FORMAT and data["verdict"] in text
    assert data["setup"]["device"] == "cpu" and "torch" in data["setup"]["machine"]
    assert [s["hidden_size"] for s in data["sizes"]] == [sizes[a].hidden_size for a in ARCHS]
    for kind in data["kinds"]:
        assert f"| {kind['arch']} | {kind['epochs']} | {kind['steps']} |" in text
        assert kind["curve"] and all(p["seconds"] > 0 for p in kind["curve"])
        assert set(kind["long_range_by_gap"]) == {"1", "2", "3", "4", "5"}


def test_the_verdict_names_the_kernels_it_timed() -> None:
    lstm = {"arch": "lstm", "core_train_ms": 10.0, "core_forward_ms": 4.0, "tokens_per_s": 100.0}
    gru = {"arch": "gru", "core_train_ms": 8.0, "core_forward_ms": 3.0, "tokens_per_s": 120.0}
    assert "for the cuDNN kernels" in gru_verdict([lstm, gru], kernels_of("cuda"))
    assert "for the CPU kernels" in gru_verdict([lstm, gru], kernels_of("cpu"))


def test_report_data_is_strict_json() -> None:
    row = {"arch": "rnn", "val_ppl": float("nan"), "tokens_per_s": 10.0, "history": []}
    row["history"] = [{"epoch": 1, "step": 2, "val_ppl": float("inf"), "tokens_per_s": 0.0}]
    data = report_data([row], {}, {"device": "cpu"}, 70, "no verdict")
    text = json.dumps(data, allow_nan=False)  # raises on NaN or infinity
    assert json.loads(text)["kinds"][0]["curve"][0] == {
        "epoch": 1, "step": 2, "seconds": None, "val_ppl": None, "train_ppl": None,
    }  # fmt: skip


def test_a_budget_must_be_positive(wiki_dir: Path) -> None:
    proc = _run("models.compare", "--data", str(wiki_dir), "--budget-s", "0")
    assert proc.returncode == 2 and "--budget-s" in proc.stderr
