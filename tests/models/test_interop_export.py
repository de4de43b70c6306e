"""`gatehouse export`: ONNX checked here again in onnxruntime, safetensors byte for byte."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models import store
from models.interop import __main__ as interop_main
from models.interop.cli import export_main, import_main
from models.lm import RNNLM, ModelConfig
from tests.helpers import REPO, save_tiny_model, tiny_tokenizer

# Imported against source, ONNX against PyTorch: float results on this machine's kernels.
pytestmark = pytest.mark.numerics

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "models"
    for seed, arch in enumerate(("lstm", "gru", "rnn")):
        save_tiny_model(path, arch, arch, seed=seed, hidden=12, layers=2)
    save_tiny_model(path, "lstm", "lstm", seed=7, hidden=12, layers=2)  # lstm@2
    return path


def export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = interop_main.main(["export", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("ref", ["lstm@1", "gru", "rnn"])
def test_onnx_matches_pytorch_at_other_batches_and_lengths(
    model_dir: Path, tmp_path: Path, ref: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc, stdout, err = export(
        capsys, ref, "--format", "onnx", "--out", str(out), "--model-dir", str(model_dir)
    )
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["max_abs_diff"] <= 1e-4
    name, version = store.parse_ref(ref)
    loaded = store.load_version(model_dir, name, version)
    assert (out / "vocab.json").read_bytes() == (loaded.path / store.VOCAB_FILE).read_bytes()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    cfg = loaded.config
    text = "i grew up in france . i speak fluent french . the keys to the old cabinet"
    ids = torch.tensor(loaded.tokenizer.encode(text).ids)
    for batch, length in ((1, 4), (2, ids.numel()), (5, 9)):
        rows = torch.stack([ids.roll(r)[:length] for r in range(batch)])
        zeros = np.zeros((cfg.num_layers, batch, cfg.hidden_size), np.float32)
        feed = {"ids": rows.numpy(), "h0": zeros}
        if cfg.arch == "lstm":
            feed["c0"] = zeros
        got = session.run(None, feed)
        with torch.inference_mode():
            logits, hidden = loaded.model(rows)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        assert np.abs(got[0] - logits.numpy()).max() <= 1e-4
        assert np.abs(got[1] - h.numpy()).max() <= 1e-4
    assert stat.S_IMODE((out / "model.onnx").stat().st_mode) == 0o644


def test_safetensors_export_is_the_stored_version(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "copy"
    rc, stdout, err = export(
        capsys, "lstm", "--format", "safetensors", "--out", str(out), "--model-dir", str(model_dir)
    )
    assert rc == 0, err
    assert json.loads(stdout)["version"] == 2  # the latest
    for file in (store.WEIGHTS_FILE, store.META_FILE, store.VOCAB_FILE):
        assert (out / file).read_bytes() == (model_dir / "lstm" / "2" / file).read_bytes()
    # What was exported is a version another store can take as it is.
    other = tmp_path / "other" / "lstm" / "1"
    other.mkdir(parents=True)
    for file in (store.WEIGHTS_FILE, store.META_FILE, store.VOCAB_FILE):
        (other / file).write_bytes((out / file).read_bytes())
    assert store.load_version(tmp_path / "other", "lstm").config.arch == "lstm"


def test_unknown_refs_are_refused_by_the_module_form(model_dir: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "models.interop", "export", "nope@3", "--format", "onnx"]
    cmd += ["--out", str(tmp_path / "o"), "--model-dir", str(model_dir)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no version 3" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_version_written_by_hand_as_the_store_format_says_loads(tmp_path: Path) -> None:
    """docs/store-format.md's recipe, with the smallest meta.json it gives."""
    meta = {"arch": "gru", "vocab_size": 5, "embedding_size": 4, "hidden_size": 4}
    meta.update(num_layers=2, dropout=0.0, tied=False)
    model = RNNLM(ModelConfig(**meta))
    tmp = tmp_path / "models" / "outside" / ".tmp-writer"
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    (tmp / "meta.json").write_text(json.dumps(meta))
    itos = ["<unk>", "<eos>", "a", "b", "c"]
    (tmp / "vocab.json").write_text(json.dumps({"lowercase": False, "vocab": {"itos": itos}}))
    assert store.list_versions(tmp_path / "models", "outside") == []  # not yet in place
    tmp.rename(tmp.parent / "1")
    loaded = store.load_version(tmp_path / "models", "outside")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_write_version_checks_the_weights_against_the_config(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    cfg = ModelConfig("lstm", len(tok.vocab), 8, 8, 1, tied=True)
    weights = dict(RNNLM(cfg).state_dict())  # a tied model's decoder.weight may be given
    assert store.write_version(tmp_path, "w", cfg, weights, tok, {"x": 1}) == 1
    assert store.load_version(tmp_path, "w").meta["x"] == 1
    weights["rnn.weight_hh_l0"] = torch.zeros(32, 7)
    with pytest.raises(store.StoreError, match="weight_hh_l0"):
        store.write_version(tmp_path, "w", cfg, weights, tok)
    assert store.list_versions(tmp_path, "w") == [1]


def test_entry_points_return_codes_instead_of_exiting(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert import_main(["--help"]) == 0 and export_main(["--help"]) == 0
    assert import_main(["pytorch-examples", "--name", "x"]) == 2  # --checkpoint missing
    assert export_main(["lstm", "--format", "tflite", "--model-dir", str(model_dir)]) == 2
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    rc, _, err = export(
        capsys, "gru", "--format", "safetensors", "--out", str(blocked), "--model-dir",
        str(model_dir),
    )  # fmt: skip
    assert rc == 2 and "cannot write" in err
