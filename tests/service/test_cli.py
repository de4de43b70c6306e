"""The real `gatehouse` console script, run as a user runs it: from the venv's bin folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata, util
from pathlib import Path

import httpx
import pytest

from service import cli
from tests.helpers import ServerProcess

GATEHOUSE = Path(sys.executable).parent / "gatehouse"


def gatehouse(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    if not GATEHOUSE.exists():
        pytest.fail(f"{GATEHOUSE} missing: pyproject declares it; reinstall (pip install -e .)")
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEHOUSE_")}
    return subprocess.run(
        [str(GATEHOUSE), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version(tmp_path: Path) -> None:
    for args in (["--version"], ["version"]):
        out = gatehouse(*args, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"gatehouse {metadata.version('gatehouse')} (torch ")


def test_unknown_command_and_bad_value_are_one_line(tmp_path: Path) -> None:
    out = gatehouse("srve", cwd=tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.splitlines()[0]
        == "gatehouse: error: unknown command 'srve' (did you mean serve?)"
    )
    out = gatehouse("serve", "--max-batch-size", "9999", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == (
        "gatehouse serve: error: invalid max_batch_size = '9999' (from --max-batch-size): "
        "must be an integer from 1 to 4096\n"
    )
    cfg = tmp_path / "g.toml"
    cfg.write_text("max_queue = 'lots'\n")
    out = gatehouse("serve", "--config", str(cfg), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "invalid max_queue = 'lots'" in out.stderr


def in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The dispatcher in this process (torch is loaded already): status and stdout."""
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse's --help
        status = int(e.code or 0)
    return status, capsys.readouterr().out


def test_help_shows_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = gatehouse("serve", "--help", cwd=tmp_path)  # the real script, without torch
    assert out.returncode == 0, out.stderr
    serve = " ".join(out.stdout.split())
    assert serve.startswith("usage: gatehouse serve")
    assert "--reload-interval-s NUM seconds between scans" in serve
    assert "(default: 2.0; > 0 and <= 3600; GATEHOUSE_RELOAD_INTERVAL_S)" in serve
    status, train = in_process(capsys, "train", "--help")
    train = " ".join(train.split())
    assert status == 0 and train.startswith("usage: gatehouse train")
    assert "--valid-fraction VALID_FRACTION share of --train held out" in train
    assert "(default: 0.1)" in train and "(default: auto)" in train
    evaluate = " ".join(in_process(capsys, "evaluate", "--help")[1].split())
    assert "--batch-size BATCH_SIZE parallel streams the text is cut into (default: 10)" in evaluate
    compare = " ".join(in_process(capsys, "compare", "--help")[1].split())
    assert "--num-threads NUM_THREADS torch threads (default: 1)" in compare
    top = in_process(capsys, "--help")[1]
    assert all(f"  {name} " in top for name in cli.COMMANDS)


def test_import_export_delegate_or_say_they_are_absent(tmp_path: Path) -> None:
    present = util.find_spec("models.interop") is not None
    for command in ("import", "export"):
        out = gatehouse(command, "--help", cwd=tmp_path)
        if present:
            assert out.returncode == 0, out.stderr
        else:
            assert out.returncode == 2
            assert out.stderr == (
                f"gatehouse {command}: error: not available in this installation "
                "(models.interop.cli is missing)\n"
            )


def test_train_evaluate_and_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    small = ["--hidden-size", "8", "--embedding-size", "8", "--max-steps", "3"]
    status, out = in_process(
        capsys, "train", "--arch", "gru", "--builtin", "--model-dir", str(store), "--name", "g",
        "--device", "cpu", "--progress", "none", "--num-threads", "1", *small,
    )  # fmt: skip
    assert status == 0
    assert json.loads(out.splitlines()[-1])["version"] == 1
    text = tmp_path / "t.txt"
    text.write_text("the clouds are in the sky .\ni grew up in france .\n")
    status, out = in_process(
        capsys, "evaluate", "--model-dir", str(store), "--name", "g@1", "--data", str(text)
    )
    assert status == 0
    result = json.loads(out)
    assert (result["name"], result["version"]) == ("g", 1) and result["ppl"] > 1
    # The store comes from GATEHOUSE_MODEL_DIR, as `gatehouse serve` would take it.
    monkeypatch.setenv("GATEHOUSE_MODEL_DIR", str(store))
    status, out = in_process(capsys, "models", "--json")
    assert status == 0
    (row,) = json.loads(out)["models"]
    assert (row["name"], row["versions"], row["arch"]) == ("g", [1], "gru")
    table = in_process(capsys, "models", "--model-dir", str(store))[1]
    assert table.splitlines()[1].split()[:4] == ["g", "versions", "1", "arch"]


class ConsoleServer(ServerProcess):
    """ServerProcess's wait/stop around `gatehouse serve` started in a folder of one's own."""

    def __init__(self, model_dir: Path, cwd: Path, *args: str, env: dict[str, str]) -> None:
        from tests.helpers import free_port

        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = cwd / "server.log"
        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEHOUSE_")}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(GATEHOUSE), "serve", "--port", str(self.port), "--model-dir", str(model_dir),
             "--torch-threads", "1", *args],
            cwd=cwd, env={**clean, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_serve_from_a_folder_with_models_py(tiny_store: Path, tmp_path: Path) -> None:
    """A user's own models.py in the working folder must not replace the models package."""
    if not GATEHOUSE.exists():
        pytest.fail(f"{GATEHOUSE} missing: reinstall (pip install -e .)")
    work = tmp_path / "project"
    work.mkdir()
    (work / "models.py").write_text("raise ImportError('the user models.py was imported')\n")
    store = tmp_path / "models"
    shutil.copytree(tiny_store, store)
    (work / "gatehouse.toml").write_text("max_texts = 2\nprotect_inference = false\n")
    env = {
        "GATEHOUSE_API_KEY": "k",
        "GATEHOUSE_PROTECT_INFERENCE": "1",  # the flag below switches it off again
        "GATEHOUSE_MAX_TXETS": "9",  # misspelt: warned about, changes nothing
    }
    server = ConsoleServer(
        store, work, "--config", "gatehouse.toml", "--no-protect-inference", env=env
    )
    try:
        server.wait_ready(timeout=120)
        body = {"model": "lstm", "texts": ["the clouds are", "i grew up in"]}
        r = httpx.post(server.url + "/predict", json=body, timeout=30)  # no key: open inference
        assert r.status_code == 200, r.text
        r = httpx.post(server.url + "/predict", json={**body, "texts": ["a"] * 3}, timeout=30)
        assert r.status_code == 413, r.text  # max_texts from the file
        assert httpx.post(server.url + "/train", json={}, timeout=30).status_code == 401
    finally:
        assert server.stop() == 0
    assert "unknown variable GATEHOUSE_MAX_TXETS ignored (did you mean GATEHOUSE_MAX_TEXTS?)" in (
        server.log()
    )
