"""Training speed and quality on the CPU against pytorch/examples' word_language_model.

    python -m bench.train_vs_peer --data ../shared/data/wikitext-2 --tokens 150000 --rounds 2

Both programs train one epoch at the same size (2 layers x 200, batch 20, bptt 35) on the
same text and are scored on the full validation and test splits. Runs alternate (peer, ours,
peer, ours, ...) so that a change in the machine's load hits both alike; the figures that
matter are the ratios within a round. The peer is run by path with its own defaults for that
size (SGD at lr 20, clip 0.25, dropout 0.2), at lr 1 for RNN_TANH (it diverges at 20); ours
runs `python -m models.train` with the project's defaults and the same sizes.

`--tokens N` trains on the first N tokens of the training split (whole lines), followed by one
line naming every other word of the full split once: both programs then have WikiText-2's
full 33,278-word vocabulary, so the 33k-way softmax costs what it costs on the whole epoch.
`--tokens 0` trains on the full split. Throughput is each program's own: the peer's mean
ms/batch over its log intervals after the first (the first holds its warm-up; dropping it
favours the peer), ours the tokens/s its summary reports (warm-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peers" / "word_language_model" / "main.py"
PEER_MODEL = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN_TANH"}
PEER_LR = {"rnn": 1.0}  # the peer's tanh RNN diverges at its default lr 20
SIZE = {"emsize": 200, "nhid": 200, "nlayers": 2, "batch_size": 20, "bptt": 35}
_LOG_INTERVAL = 20  # batches per peer log line


def _head(lines: list[str], tokens: int) -> list[str]:
    """The first whole lines holding `tokens` tokens (one <eos> per line counted)."""
    kept: list[str] = []
    count = 0
    for line in lines:
        if count >= tokens:
            break
        kept.append(line)
        count += len(line.split()) + 1
    return kept


def write_slice(data: Path, tokens: int, out: Path, eval_tokens: int = 0) -> int:
    """`out`/{train,valid,test}.txt: the first `tokens` of train (see the module doc) and
    the first `eval_tokens` of valid and test (0: all of them).

    Returns the number of training tokens written, counting one <eos> per line as both
    programs do.
    """
    out.mkdir(parents=True, exist_ok=True)
    for split in ("valid", "test"):
        if eval_tokens:
            text = (data / f"{split}.txt").read_text(encoding="utf-8")
            head = _head(text.splitlines(keepends=True), eval_tokens)
            (out / f"{split}.txt").write_text("".join(head), encoding="utf-8")
        else:
            shutil.copyfile(data / f"{split}.txt", out / f"{split}.txt")
    lines = (data / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    kept = _head(lines, tokens)
    seen = {w for line in kept for w in line.split()}
    count = sum(len(line.split()) + 1 for line in kept)
    rest: list[str] = []
    for line in lines[len(kept) :]:
        for w in line.split():
            if w not in seen:
                seen.add(w)
                rest.append(w)
    if rest:
        kept.append(" " + " ".join(rest) + " \n")
        count += len(rest) + 1
    (out / "train.txt").write_text("".join(kept), encoding="utf-8")
    return count


def _floats(pattern: str, text: str) -> list[float]:
    return [float(m) for m in re.findall(pattern, text)]


def _timed(
    cmd: list[str], cwd: Path, threads: int
) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `cmd`; returns it with its wall and CPU seconds (user + system, all threads).

    On a machine others load, CPU seconds are the fairer speed: a program's wall time then
    depends on the share of the cores it got.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    out = subprocess.run(
        cmd, capture_output=True, text=True, cwd=cwd, env=_env(threads), check=False
    )
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, wall, cpu


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_peer(arch: str, data: Path, work: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(PEER), "--data", str(data), "--model", PEER_MODEL[arch]]
    cmd += ["--emsize", str(SIZE["emsize"]), "--nhid", str(SIZE["nhid"])]
    cmd += ["--nlayers", str(SIZE["nlayers"]), "--batch_size", str(SIZE["batch_size"])]
    cmd += ["--bptt", str(SIZE["bptt"]), "--epochs", "1", "--save", str(work / "peer.pt")]
    cmd += ["--log-interval", str(_LOG_INTERVAL)]
    if arch in PEER_LR:
        cmd += ["--lr", str(PEER_LR[arch])]
    out, wall, cpu = _timed(cmd, work, threads)
    if out.returncode != 0:
        raise RuntimeError(f"peer failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr}")
    ms = _floats(r"ms/batch\s+([\d.]+)", out.stdout)
    if len(ms) < 2:
        raise RuntimeError("the peer logged fewer than two intervals: train on more --tokens")
    tokens_per_batch = SIZE["batch_size"] * SIZE["bptt"]
    return {
        "program": "peer",
        "tokens_per_s": tokens_per_batch / (statistics.mean(ms[1:]) / 1000),
        "val_ppl": _floats(r"valid ppl\s+([\d.]+)", out.stdout)[-1],
        "test_ppl": _floats(r"test ppl\s+([\d.]+)", out.stdout)[-1],
        "epoch_s": _floats(r"time:\s+([\d.]+)s", out.stdout)[-1],  # training + validation
        "wall_s": wall,
        "cpu_s": cpu,
    }


def run_ours(arch: str, data: Path, work: Path, threads: int, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "models.train", "--arch", arch, "--progress", "none"]
    cmd += ["--train", str(data / "train.txt"), "--valid", str(data / "valid.txt")]
    cmd += ["--test", str(data / "test.txt"), "--model-dir", str(work / "store")]
    cmd += ["--name", f"bench-{arch}", "--epochs", "1", "--num-layers", str(SIZE["nlayers"])]
    cmd += ["--embedding-size", str(SIZE["emsize"]), "--hidden-size", str(SIZE["nhid"])]
    cmd += ["--batch-size", str(SIZE["batch_size"]), "--bptt", str(SIZE["bptt"]), *extra]
    if threads:
        cmd += ["--num-threads", str(threads)]
    out, wall, cpu = _timed(cmd, REPO, threads)
    if out.returncode != 0:
        raise RuntimeError(f"ours failed ({out.returncode}):\n{out.stdout[-2000:]}{out.stderr}")
    m = json.loads(out.stdout.strip().splitlines()[-1])["metrics"]
    return {
        "program": "ours",
        "tokens_per_s": m["tokens_per_s"],
        "val_ppl": m["val_ppl"],
        "test_ppl": m["test_ppl"],
        "train_s": m["train_seconds"],
        "wall_s": wall,
        "cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_vs_peer", description=__doc__)
    p.add_argument("--data", required=True, help="directory with WikiText-2's three splits")
    p.add_argument("--tokens", type=int, default=150_000, help="training tokens (0: all)")
    p.add_argument(
        "--eval-tokens", type=int, default=0, help="first N tokens of valid and test (0: all)"
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--archs", default="lstm,gru,rnn")
    p.add_argument("--threads", type=int, default=0, help="torch threads for both (0: default)")
    p.add_argument("--ours", default="", help="extra flags for models.train, one string")
    p.add_argument(
        "--programs",
        default="peer,ours",
        help="which to run each round (ours alone: a flag set against a peer figure "
        "measured earlier; the summary table needs both)",
    )
    p.add_argument("--json", help="also write every run's figures to this file")
    args = p.parse_args(argv)
    if not PEER.exists():
        print(f"error: the peer is not at {PEER}", file=sys.stderr)
        return 2
    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    if not programs or set(programs) - {"peer", "ours"}:
        print("error: --programs takes peer, ours or both", file=sys.stderr)
        return 2
    data = Path(args.data).resolve()  # the peer runs in another folder
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="train-vs-peer-") as tmp:
        work = Path(tmp)
        if args.tokens:
            n = write_slice(data, args.tokens, work / "data", args.eval_tokens)
            data = work / "data"
            print(
                f"training split: the first {args.tokens:,} tokens + the rest of the "
                f"vocabulary = {n:,} tokens",
                flush=True,
            )
        for arch in args.archs.split(","):
            for round_ in range(args.rounds):
                for program in programs:
                    if program == "peer":
                        r = run_peer(arch, data, work, args.threads)
                    else:
                        r = run_ours(arch, data, work, args.threads, args.ours.split())
                    r.update(arch=arch, round=round_ + 1, load=os.getloadavg()[0])
                    runs.append(r)
                    print(json.dumps(r), flush=True)
    if programs == ["peer", "ours"]:
        print(format_summary(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    return 0


def format_summary(runs: list[dict[str, Any]]) -> str:
    """One markdown row per (arch, round): both programs' figures and ours/peer ratios."""
    rows = [
        "| arch | round | peer tok/s | ours tok/s | speed ours/peer | peer valid | "
        "ours valid | valid ours/peer | peer wall s | ours wall s | CPU s ours/peer | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for peer, ours in zip(runs[::2], runs[1::2], strict=True):
        rows.append(
            f"| {peer['arch']} | {peer['round']} | {peer['tokens_per_s']:,.0f} | "
            f"{ours['tokens_per_s']:,.0f} | {ours['tokens_per_s'] / peer['tokens_per_s']:.2f} | "
            f"{peer['val_ppl']:.1f} | {ours['val_ppl']:.1f} | "
            f"{ours['val_ppl'] / peer['val_ppl']:.2f} | {peer['wall_s']:.0f} | "
            f"{ours['wall_s']:.0f} | {ours['cpu_s'] / peer['cpu_s']:.2f} | "
            f"{peer['load']:.1f}/{ours['load']:.1f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
