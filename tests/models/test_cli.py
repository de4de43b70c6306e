"""The three CLIs, run as users run them: `python -m ...` in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import store

REPO = Path(__file__).resolve().parents[2]
WIKITEXT = REPO / ".." / "shared" / "data" / "wikitext-2"
TINY = ["--embedding-size", "8", "--hidden-size", "8", "--batch-size", "4", "--bptt", "8"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wiki_slice(tmp_path_factory) -> dict[str, Path]:
    lines = (WIKITEXT / "valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    d = tmp_path_factory.mktemp("wiki")
    parts = {"train": lines[:300], "valid": lines[300:360], "test": lines[360:420]}
    for name, chunk in parts.items():
        (d / f"{name}.txt").write_text("".join(chunk), encoding="utf-8")
    return {name: d / f"{name}.txt" for name in parts}


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_train_cli_builtin_each_kind(arch: str, tmp_path: Path) -> None:
    out = summary(
        run(
            "models.train",
            "--arch",
            arch,
            "--builtin",
            "--model-dir",
            str(tmp_path),
            "--name",
            f"tiny-{arch}",
            "--max-steps",
            "2",
            "--num-threads",
            "1",
            *TINY,
        )
    )
    assert out["name"] == f"tiny-{arch}" and out["version"] == 1 and out["seconds"] > 0
    assert out["metrics"]["steps"] == 2
    assert set(out["metrics"]["long_range_acc_by_gap"]) == {"1", "2", "3", "4", "5"}
    loaded = store.load_version(tmp_path, f"tiny-{arch}")
    assert loaded.config.arch == arch and loaded.tokenizer.lowercase is True
    assert loaded.meta["metrics"]["val_ppl"] == pytest.approx(out["metrics"]["val_ppl"])
    assert loaded.meta["corpus"]["kind"] == "builtin"


def test_train_then_evaluate_on_wikitext_slice(wiki_slice: dict, tmp_path: Path) -> None:
    out = summary(
        run(
            "models.train",
            "--arch",
            "lstm",
            "--train",
            str(wiki_slice["train"]),
            "--valid",
            str(wiki_slice["valid"]),
            "--test",
            str(wiki_slice["test"]),
            "--model-dir",
            str(tmp_path),
            "--name",
            "wiki",
            "--max-steps",
            "2",
            "--tied",
            "--max-vocab",
            "500",
            "--device",
            "cpu",
            *TINY,
        )
    )
    assert out["metrics"]["test_ppl"] > 1 and out["metrics"]["val_ppl"] > 1
    assert "long_range_acc" not in out["metrics"]
    ev = summary(
        run(
            "models.evaluate",
            "--model-dir",
            str(tmp_path),
            "--name",
            "wiki@1",
            "--data",
            str(wiki_slice["test"]),
        )
    )
    assert ev["version"] == 1 and ev["ppl"] == pytest.approx(out["metrics"]["test_ppl"], rel=1e-4)


def test_compare_cli_prints_a_row_per_kind_and_plots(tmp_path: Path) -> None:
    png = tmp_path / "val.png"
    proc = run("models.compare", "--max-steps", "2", "--epochs", "1", "--plot", str(png), *TINY)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert {"rnn", "lstm", "gru"} <= {r[0] for r in rows if r}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [
        ["models.train", "--arch", "lstm", "--model-dir", "x", "--name", "n"],  # no corpus
        ["models.train", "--arch", "lstm", "--builtin", "--model-dir", "x", "--name", "Bad!"],
        [
            "models.train",
            "--arch",
            "lstm",
            "--train",
            "/no/such/file",
            "--model-dir",
            "x",
            "--name",
            "n",
        ],
        ["models.evaluate", "--model-dir", "/no/such/dir", "--name", "m", "--data", "x.txt"],
    ],
)
def test_cli_errors_exit_nonzero_with_a_message(args: list[str]) -> None:
    proc = run(*args)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")


def test_builtin_starts_from_the_default_recipe_and_flags_override() -> None:
    from models.defaults import default_configs
    from models.train_cli import _config, _parser

    base = ["--model-dir", "x", "--name", "n"]
    cfg = _config(_parser().parse_args(["--arch", "gru", "--builtin", *base]))
    recipe = default_configs()["gru"]
    assert (cfg.gate_bias, cfg.max_steps, cfg.lr) == (recipe.gate_bias, recipe.max_steps, 1e-2)
    cfg = _config(_parser().parse_args(["--arch", "gru", "--builtin", "--lr", "0.5", *base]))
    assert cfg.lr == 0.5 and cfg.max_steps == recipe.max_steps
    cfg = _config(_parser().parse_args(["--arch", "lstm", "--train", "t.txt", *base]))
    assert cfg.gate_bias is None and cfg.lowercase is False and cfg.epochs == 3
    cfg = _config(
        _parser().parse_args(["--arch", "lstm", "--train", "t", "--optimizer", "sgd", *base])
    )
    assert (cfg.effective_lr, cfg.effective_clip) == (1.0, 0.5)


def test_schedule_flags_set_the_config_and_a_bad_schedule_is_refused() -> None:
    from models.train_cli import _config, _parser

    base = ["--arch", "lstm", "--train", "t", "--model-dir", "x", "--name", "n"]
    flags = ["--schedule", "cosine", "--warmup-steps", "50", "--min-lr-ratio", "0.1"]
    cfg = _config(_parser().parse_args([*base, *flags, "--decay-start", "0.2"]))
    assert (cfg.schedule, cfg.warmup_steps, cfg.decay_start, cfg.min_lr_ratio) == (
        "cosine",
        50,
        0.2,
        0.1,
    )
    with pytest.raises(ValueError, match="schedule"):
        _config(_parser().parse_args([*base, "--schedule", "linear"]))
