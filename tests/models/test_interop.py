"""Importing pytorch/examples' word_language_model checkpoints, trained by its own main.py.

The comparison is against the peer's own model, loaded by its own code in a subprocess
(`tests.models.peers.reference`), and, end to end, against what a real server's `/predict`
answers for the imported versions.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from models import store
from models.interop import __main__ as interop_main
from models.interop import pytorch_examples
from models.interop.convert import MAX_LOGPROB_DIFF, convert, max_logprob_diff
from models.interop.source import ImportRefused
from tests.helpers import REPO, ServerProcess, save_tiny_model
from tests.models import peers

# Imported against the source model: float results on this machine's kernels.
pytestmark = [
    pytest.mark.numerics,
    pytest.mark.skipif(
        not (peers.PEER / "main.py").exists() or not peers.WIKITEXT.exists(),
        reason="the shared peer copy or WikiText-2 is missing",
    ),
]
NAMES = {"LSTM": "peer-lstm", "GRU": "peer-gru", "RNN_TANH": "peer-rnn"}


def run_cli(*argv: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """`python -m models.interop ...` in a process of its own."""
    cmd = [sys.executable, "-m", "models.interop", *argv]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, umask=umask)


def call_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> subprocess.CompletedProcess[str]:
    """The same entry point in this process (each interpreter start costs seconds here)."""
    capsys.readouterr()
    rc = interop_main.main(list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(argv), rc, out, err)


@pytest.fixture(scope="session")
def peer(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("peer")
    data = peers.corpus_slice(folder / "data")
    checkpoints = peers.train_peers(folder, data)
    ref = peers.reference(folder, data, checkpoints)
    return {"folder": folder, "data": data, "checkpoints": checkpoints, "ref": ref}


@pytest.fixture(scope="session")
def imported(peer: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three supported kinds imported by the command, under a restrictive umask."""
    model_dir = tmp_path_factory.mktemp("imported") / "models"
    for kind, name in NAMES.items():
        argv = ["import", "pytorch-examples", "--checkpoint", str(peer["checkpoints"][kind])]
        argv += ["--data", str(peer["data"]), "--name", name, "--model-dir", str(model_dir)]
        if kind == "LSTM":
            done = run_cli(*argv, umask=0o077)
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout)
            assert report["version"] == 1
            assert report["max_abs_logprob_diff"] <= MAX_LOGPROB_DIFF
        else:
            old = os.umask(0o077)
            try:
                assert interop_main.main(argv) == 0
            finally:
                os.umask(old)
    return model_dir


def reference_logp(peer: dict, kind: str) -> torch.Tensor:
    return torch.load(peer["folder"] / f"{kind}.logp.pt", weights_only=True)


def gatehouse_logp(model_dir: Path, name: str, words: list[str]) -> torch.Tensor:
    """Log-probs [T, V_peer] of the stored version, columns in the peer's word order."""
    loaded = store.load_version(model_dir, name)
    encoded = loaded.tokenizer.encode(" ".join(words))
    assert encoded.tokens == words and not encoded.unknown
    with torch.inference_mode():
        logits, _ = loaded.model(torch.tensor([encoded.ids]))
    return torch.log_softmax(logits[0], -1), loaded


@pytest.mark.parametrize("kind", list(NAMES))
def test_imported_version_equals_the_peer_model(peer: dict, imported: Path, kind: str) -> None:
    ref = peer["ref"]
    logp, loaded = gatehouse_logp(imported, NAMES[kind], ref["sample"])
    columns = torch.tensor([loaded.tokenizer.vocab.stoi[w] for w in ref["itos"]])
    assert loaded.tokenizer.vocab.itos[:2] == ["<unk>", "<eos>"]
    diff = (logp[:, columns] - reference_logp(peer, kind)).abs().max().item()
    assert diff <= MAX_LOGPROB_DIFF
    meta = loaded.meta
    assert meta["imported"]["rnn_type"] == kind and meta["tied"] is (kind == "GRU")
    # The peer's corpus has no <unk>: the added word must take no probability from others.
    if "<unk>" not in ref["itos"]:
        assert logp[:, 0].exp().max().item() == 0.0


def test_files_are_readable_whatever_the_umask(imported: Path) -> None:
    for name in NAMES.values():
        version = imported / name / "1"
        assert stat.S_IMODE(version.stat().st_mode) == 0o755
        for file in (store.WEIGHTS_FILE, store.META_FILE, store.VOCAB_FILE):
            assert stat.S_IMODE((version / file).stat().st_mode) == 0o644, file


def test_a_server_started_before_the_import_serves_it(
    peer: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    save_tiny_model(model_dir, "lstm", "lstm")
    server = ServerProcess(model_dir, "--no-bootstrap", env={"GATEHOUSE_RELOAD_INTERVAL_S": "0.5"})
    try:
        server.wait_ready(timeout=120)
        for kind in ("LSTM", "GRU"):
            done = call_cli(
                capsys,
                "import", "pytorch-examples", "--checkpoint", str(peer["checkpoints"][kind]),
                "--data", str(peer["data"]), "--name", NAMES[kind], "--model-dir", str(model_dir),
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        words = peer["ref"]["sample"][:25]
        for kind in ("LSTM", "GRU"):
            expected = reference_logp(peer, kind)[len(words) - 1].exp()
            body = {"model": NAMES[kind], "text": " ".join(words), "top_k": 5}
            answer = _wait_for(server, body)
            assert answer["tokens"] == words
            itos = peer["ref"]["itos"]
            for p in answer["predictions"]:
                assert p["prob"] == pytest.approx(expected[itos.index(p["word"])].item(), abs=1e-5)
            top = expected.topk(5).values
            assert [p["prob"] for p in answer["predictions"]] == pytest.approx(
                top.tolist(), abs=1e-5
            )
        gates = httpx.get(
            server.url + "/gates", params={"model": "peer-lstm", "text": "the game"}, timeout=30
        )
        assert gates.status_code == 200, gates.text
    finally:
        server.stop()


def _wait_for(server: ServerProcess, body: dict) -> dict:
    # The registry picks up new versions on its reload tick: give it generous time.
    for _ in range(240):
        r = httpx.post(server.url + "/predict", json=body, timeout=30)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 404, r.text
        time.sleep(0.25)
    raise AssertionError(f"{body['model']} never appeared:\n{server.log()}")


@pytest.mark.parametrize(
    ("kind", "words"), [("RNN_RELU", "RNN_RELU"), ("Transformer", "Transformer")]
)
def test_unsupported_kinds_are_refused(
    peer: dict, tmp_path: Path, kind: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    done = (run_cli if kind == "Transformer" else functools.partial(call_cli, capsys))(
        "import", "pytorch-examples", "--checkpoint", str(peer["checkpoints"][kind]),
        "--data", str(peer["data"]), "--name", "x", "--model-dir", str(model_dir),
    )  # fmt: skip
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr
    assert store.list_names(model_dir) == []


def test_state_dicts_of_the_peer_import_too(
    peer: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    state = peer["folder"] / "LSTM.state.pt"
    done = call_cli(capsys,
        "import", "pytorch-examples", "--checkpoint", str(state), "--data", str(peer["data"]),
        "--name", "sd", "--model-dir", str(model_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    logp, loaded = gatehouse_logp(model_dir, "sd", peer["ref"]["sample"])
    columns = torch.tensor([loaded.tokenizer.vocab.stoi[w] for w in peer["ref"]["itos"]])
    assert (logp[:, columns] - reference_logp(peer, "LSTM")).abs().max() <= MAX_LOGPROB_DIFF
    # A plain RNN's state_dict cannot say tanh from ReLU: refused unless --arch says so.
    rnn_state = str(peer["folder"] / "RNN_TANH.state.pt")
    common = ["--data", str(peer["data"]), "--model-dir", str(model_dir)]
    refused = call_cli(
        capsys, "import", "pytorch-examples", "--checkpoint", rnn_state, "--name", "r", *common
    )
    assert refused.returncode == 2 and "--arch rnn" in refused.stderr
    ok = call_cli(capsys,
        "import", "pytorch-examples", "--checkpoint", rnn_state, "--arch", "rnn", "--name", "r",
        *common,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_state_dict_command_with_a_text_vocabulary(
    peer: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    state = torch.load(peer["folder"] / "GRU.state.pt", weights_only=True)
    weights = tmp_path / "gru.safetensors"
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(weights))
    vocab = tmp_path / "words.txt"
    vocab.write_text("\n".join(peer["ref"]["itos"]) + "\n", encoding="utf-8")
    sample = tmp_path / "sample.txt"
    sample.write_text(" ".join(peer["ref"]["sample"]), encoding="utf-8")
    argv = ["import", "state-dict", "--weights", str(weights), "--vocab", str(vocab)]
    argv += ["--sample", str(sample)]
    done = call_cli(capsys, *argv, "--arch", "gru", "--name", "g", "--model-dir", str(model_dir))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tokens"] == len(peer["ref"]["sample"])
    logp, loaded = gatehouse_logp(model_dir, "g", peer["ref"]["sample"])
    columns = torch.tensor([loaded.tokenizer.vocab.stoi[w] for w in peer["ref"]["itos"]])
    assert (logp[:, columns] - reference_logp(peer, "GRU")).abs().max() <= MAX_LOGPROB_DIFF
    wrong = call_cli(capsys, *argv, "--arch", "lstm", "--name", "g", "--model-dir", str(model_dir))
    assert wrong.returncode == 2 and "do not match" in wrong.stderr
    assert store.list_versions(model_dir, "g") == [1]


def test_state_dict_command_round_trips_a_gatehouse_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = tmp_path / "models"
    save_tiny_model(model_dir, "src", "lstm", hidden=8)
    version = model_dir / "src" / "1"
    argv = ["import", "state-dict", "--weights", str(version / store.WEIGHTS_FILE)]
    argv += ["--vocab", str(version / store.VOCAB_FILE), "--arch", "lstm", "--lowercase"]
    done = call_cli(capsys, *argv, "--name", "copy", "--model-dir", str(model_dir))
    assert done.returncode == 0, done.stderr
    a, b = store.load_version(model_dir, "src"), store.load_version(model_dir, "copy")
    assert a.tokenizer.vocab.itos == b.tokenizer.vocab.itos and b.tokenizer.lowercase
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_a_pickle_that_runs_code_is_refused_without_running_it(
    tmp_path: Path, peer: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"encoder.weight": Payload()}, evil)
    done = call_cli(
        capsys,
        "import", "pytorch-examples", "--checkpoint", str(evil), "--data", str(peer["data"]),
        "--name", "x", "--model-dir", str(tmp_path / "models"),
    )  # fmt: skip
    assert done.returncode == 2 and "without running its code" in done.stderr
    assert not marker.exists()


def test_the_check_catches_a_wrong_reordering(peer: dict) -> None:
    src, ids = pytorch_examples.read(peer["checkpoints"]["LSTM"], peer["data"])
    converted = convert(src)
    assert max_logprob_diff(src, converted, ids) <= MAX_LOGPROB_DIFF
    # Two words' places swapped in the mapping, as a wrong permutation would leave them.
    first, second = int(ids[0]), int(ids[1])
    assert converted.columns[first] != converted.columns[second]
    converted.columns[[first, second]] = converted.columns[[second, first]]
    assert max_logprob_diff(src, converted, ids) > MAX_LOGPROB_DIFF


def test_a_corpus_other_than_the_training_one_is_refused(peer: dict, tmp_path: Path) -> None:
    other = peers.corpus_slice(tmp_path / "other", train_lines=40)
    with pytest.raises(ImportRefused, match="vocabulary"):
        pytorch_examples.read(peer["checkpoints"]["GRU"], other)
    shutil.rmtree(other)
