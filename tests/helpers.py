"""Test helpers shared by both packages: tiny real models, and a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import torch

from models import store
from models.lm import RNNLM, ModelConfig
from models.tokenizer import Tokenizer, Vocab, tokenize

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext-2"

TINY_TEXT = """the clouds are in the sky .
i grew up in france . i speak fluent french .
the keys to the old cabinet are on the table .
the key to the old cabinets is on the table .
"""


def tiny_tokenizer() -> Tokenizer:
    return Tokenizer(Vocab.build(Counter(tokenize(TINY_TEXT, lowercase=True))), lowercase=True)


def save_tiny_model(
    model_dir: Path, name: str, arch: str, seed: int = 0, hidden: int = 16, layers: int = 2
) -> int:
    """An untrained but real model: enough to test everything that is not model quality."""
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = ModelConfig(arch, len(tok.vocab), hidden, hidden, layers, dropout=0.2, tied=False)
    model = RNNLM(cfg).eval()
    meta = {"metrics": {"val_ppl": 10.0 + seed}, "corpus": {"description": "tests"}}
    return store.save_version(model_dir, name, model, tok, meta)


def make_tiny_store(model_dir: Path) -> Path:
    for arch in ("rnn", "lstm", "gru"):
        save_tiny_model(model_dir, arch, arch)
    return model_dir


def make_comparison_report(folder: Path, epochs: int = 3) -> Path:
    """A real `models.compare --report` run on the built-in corpus: three tiny kinds, batches
    so wide that an epoch is 8 steps (one validation point each); returns the report.json it
    writes (folder/comparison/report.json)."""
    page = folder / "comparison.md"
    cmd = [sys.executable, "-m", "models.compare", "--epochs", str(epochs), "--batch-size", "256"]
    cmd += ["--max-steps", "1000", "--embedding-size", "8", "--hidden-size", "8"]
    cmd += ["--report", str(page)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return folder / "comparison" / "report.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The real `python -m service` on a free loopback port, its log captured to a file."""

    def __init__(self, model_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.model_dir = model_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = model_dir.parent / f"server-{self.port}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        cmd = [sys.executable, "-m", "service", "--port", str(self.port)]
        cmd += ["--model-dir", str(model_dir), "--torch-threads", "1", *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60.0, path: str = "/readyz") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
