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
_PACKAGES = [
    "torch==2.13.0",
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "numpy",
    "pyyaml",
]


class PeerFailed(RuntimeError):
    """The peer answered something other than 200s: its figures are not a measurement."""


def ensure_venv(log=print) -> None:  # type: ignore[no-untyped-def]
    """The peer's venv (run_peer.sh installs the same packages, PyYAML included, when it is
    missing; building it here first says so in the bench log instead of a silent pause)."""
    if not (VENV / "bin" / "torchserve").exists():
        python = VENV / "bin" / "python"
        log(f"building TorchServe's venv in {VENV} (first run only, takes minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *_PACKAGES], check=True)


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
    # A dead worker answers fast 503s: such a run looks like thousands of req/s, so any
    # answer but a 200 (or the script's own failure) voids the figure instead of reporting it.
    if out.returncode != 0 or result.rps == 0 or result.failed:
        raise PeerFailed(
            f"TorchServe peer run failed (exit {out.returncode}, statuses {result.statuses}, "
            f"errors {result.errors}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        )
    return result
