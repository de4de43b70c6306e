"""The reference peer: TorchServe 0.12 serving the same LSTM size, run by path from
`../shared/peers/torchserve/run_peer.sh` (it starts TorchServe, drives it with `hey`, stops it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .hey import LoadResult, parse

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = REPO.parent / "shared" / "peers" / "torchserve"
VENV = Path(os.environ.get("TS_VENV", "/tmp/ts-venv"))
_PACKAGES = ["torch==2.13.0", "torchserve==0.12.0", "torch-model-archiver==0.12.0", "numpy"]


def ensure_venv(log=print) -> None:  # type: ignore[no-untyped-def]
    """The peer's venv, plus PyYAML: TorchServe's worker imports it, and without it the worker
    dies at start-up and every request times out (run_peer.sh's own install omits it)."""
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "torchserve").exists():
        log(f"building TorchServe's venv in {VENV} (first run only, takes minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *_PACKAGES], check=True)
    probe = subprocess.run([str(python), "-c", "import yaml"], capture_output=True)
    if probe.returncode != 0:
        log("installing PyYAML into TorchServe's venv (its worker needs it)")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pyyaml"], check=True)


def run(batch_size: int, delay_ms: int, concurrency: int, seconds: int) -> LoadResult:
    script = PEER_DIR / "run_peer.sh"
    out = subprocess.run(
        ["bash", str(script), str(batch_size), str(delay_ms), str(concurrency), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 240,
        env={**os.environ, "TS_VENV": str(VENV)},
    )
    result = parse(out.stdout)
    # run_peer.sh greps hey's summary, dropping the "Error distribution:" header: its error
    # lines are the bracketed lines that are not status counts.
    for line in out.stdout.splitlines():
        head, _, msg = line.strip().partition("]")
        if head.startswith("[") and head[1:].isdigit() and not msg.strip().endswith("responses"):
            result.errors[msg.strip()] = result.errors.get(msg.strip(), 0) + int(head[1:])
    if result.rps == 0:
        raise RuntimeError(f"TorchServe peer gave no result:\n{out.stdout}\n{out.stderr[-2000:]}")
    return result
