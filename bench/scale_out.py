"""`serve --workers N` and nginx in front: req/s and p99 of `/predict` at concurrency 256.

Each configuration gets its own server(s) on a free loopback port, a `hey` warm-up, then
`--seconds` of closed-loop load at `--concurrency`; configurations run one after another in
one invocation, so their ratios meet the same machine:

- `direct`: one plain `python -m service` process;
- `workers=N`: the supervisor of `service.supervisor` with N spawned servers on one socket;
- `nginx`: the plain process behind a real nginx (tests/daemons/nginx.py), against `direct`.

The supervisor is driven directly, as `serve_workers` would after its start-up checks: the
check that refuses N > 1 with in-process session and job stores is skipped, since `/predict`
touches neither store (with Redis and PostgreSQL configured the processes are the same).

    python -m bench.scale_out [--workers 1,2,4] [--seconds 10] [--out docs/...md]
    python -m bench.scale_out --device cuda --model wikitext --workers 1,2,4,8   # a GPU host
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from models import store
from models.device import cpu_name
from models.lm import RNNLM, ModelConfig

from . import hey
from .echo import NAME, TEXT, build_tiny
from .server import REPO, Server, free_port

READY_LINE = "Application startup complete"
SUPERVISE = """
import sys
from pathlib import Path
from service import logs
from service.settings import Settings
from service.supervisor import Supervisor, bind

model_dir, port, workers, device, threads = sys.argv[1:6]
settings = Settings(
    model_dir=Path(model_dir), port=int(port), workers=int(workers), device=device,
    torch_threads=int(threads), no_bootstrap=True, default_model="lstm",
)
logs.configure_logging("info")
sys.exit(Supervisor(settings, bind(settings)).run())
"""


def build_wikitext(model_dir: Path) -> None:
    """The WikiText-2-size LSTM (2 x 650, vocabulary 33,278), random weights: speed only."""
    from models.tokenizer import Tokenizer, Vocab

    text_words = list(dict.fromkeys(TEXT.split()))  # the request's words are in vocabulary
    filler = [f"w{i}" for i in range(33_276 - len(text_words))]
    vocab = Vocab.build(Counter(dict.fromkeys(text_words + filler, 1)))  # + <unk>, <eos>
    cfg = ModelConfig("lstm", len(vocab), 650, 650, 2, dropout=0.5, tied=True)
    torch.manual_seed(0)
    tok = Tokenizer(vocab, lowercase=True)
    store.save_version(model_dir, NAME, RNNLM(cfg).eval(), tok, {"bench": "scale_out"})


@contextlib.contextmanager
def supervised(
    model_dir: Path, workers: int, device: str, threads: int, log: Path
) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        args = [str(model_dir), str(port), str(workers), device, str(threads)]
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE, *args],
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_all_ready(workers, proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_all_ready(workers: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Every worker has loaded the model: each logs uvicorn's start-up line once."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"supervisor exited with {proc.returncode}: {log.read_text()}")
        if log.read_text(errors="replace").count(READY_LINE) >= workers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"workers not ready: {log.read_text()[-3000:]}")


def load(url: str, concurrency: int, seconds: float) -> hey.LoadResult:
    body = json.dumps({"model": NAME, "text": TEXT, "top_k": 5})
    return hey.run(url + "/predict", body, concurrency, seconds)


def row(name: str, r: hey.LoadResult, seconds: float, base: float | None) -> str:
    """2xx answers per second lead: under overload the server refuses with 503s fast, and
    `hey`'s own req/s counts those too."""
    good = r.ok / seconds
    ratio = f"{good / base:.2f}x" if base else "1.00x"
    p99 = r.p(99)
    p99_ms = f"{p99 * 1000:.0f}" if p99 is not None else "-"
    refused = r.statuses.get(503, 0)
    other = r.failed - refused
    return (
        f"| {name} | {good:,.0f} | {ratio} | {r.rps:,.0f} | {p99_ms} | {r.ok:,} | "
        f"{refused:,} | {other:,} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__)
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="tiny", choices=["tiny", "wikitext"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--no-nginx", action="store_true", help="skip nginx vs direct")
    p.add_argument("--out", type=Path, help="append the Markdown table to this file")
    args = p.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    hey.require_hey()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        model_dir = root / "models"
        build_tiny(model_dir) if args.model == "tiny" else build_wikitext(model_dir)
        load_before = os.getloadavg()
        env = {"GATEHOUSE_TORCH_THREADS": str(args.threads), "GATEHOUSE_DEVICE": args.device}
        results: list[tuple[str, hey.LoadResult]] = []
        with Server(model_dir, NAME, root / "direct.log", env) as direct:
            results.append(
                ("direct (one process)", load(direct.url, args.concurrency, args.seconds))
            )
            print(results[-1][0], results[-1][1].ok, flush=True)
            if not args.no_nginx:
                from tests.daemons.nginx import nginx

                with nginx(root / "nginx", [direct.port]) as lb:
                    results.append(
                        ("nginx -> one process", load(lb.url, args.concurrency, args.seconds))
                    )
                print(results[-1][0], results[-1][1].ok, flush=True)
        for n in counts:
            log = root / f"workers-{n}.log"
            with supervised(model_dir, n, args.device, args.threads, log) as url:
                results.append((f"--workers {n}", load(url, args.concurrency, args.seconds)))
            print(results[-1][0], results[-1][1].ok, flush=True)
        load_after = os.getloadavg()
    base = results[0][1].ok / args.seconds
    lines.append(
        f"`python -m bench.scale_out {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" — {cpu_name()}, {os.cpu_count()} cores, {platform.python_version()}, torch "
        f"{torch.__version__}, device {args.device}, model {args.model}, torch threads "
        f"{args.threads} per process, c={args.concurrency}, {args.seconds:.0f} s per point; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after."
    )
    lines.append("")
    lines.append(
        "| configuration | 2xx/s | vs direct | all answers/s | p99 ms | 2xx | 503 | other failed |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    lines += [
        row(name, r, args.seconds, None if i == 0 else base) for i, (name, r) in enumerate(results)
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
