"""`make bench` = `python -m bench`: the serving benchmark, in one run on one machine.

Builds an LSTM of WikiText-2 size, then measures, in this order: the raw model in-process at
batch 1/8/64 (and in half precision at 1 and 64); our server with dynamic batching, then with
it off (GATEHOUSE_MAX_BATCH_SIZE=1), then batched in half precision (--half; bf16 on a CPU,
fp16 on CUDA), each driven by `hey` at concurrency 1/8/64 with 9-token requests; session
steps at history 10 vs 1000; the c=1 target with raw and server windows interleaved
(bench/c1_check.py); the TorchServe peer (batched at 1/8/64, unbatched at 64). Prints a
Markdown report with ratios and the issue 6 targets; `--out` also writes it to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from models import store
from models.device import cpu_name
from models.lm import HALF_DTYPES, tune_decoder

from . import c1_check, hey, peer, raw, serving_model, session_latency
from .report import OFF, ON, PEER, PEER_OFF, Results, markdown, on_half, targets
from .server import Server


def machine() -> dict[str, str]:
    cpu = cpu_name()
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores{mem}",
        "software": f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"{platform.system()} {platform.release()}",
        "load average at start (1/5/15 min)": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8, help="measured seconds per load point")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each")
    p.add_argument("--concurrency", default="1,8,64", help="comma-separated levels")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-batch-delay-ms", type=float, help="default: the server's")
    p.add_argument("--torch-threads", type=int, default=0, help="0: the server's default")
    p.add_argument("--session-steps", type=int, default=40)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="model device")
    p.add_argument(
        "--data",
        type=Path,
        default=serving_model.WIKITEXT_TRAIN.parent,
        help="WikiText-2 folder: its train.txt gives the model's vocabulary",
    )
    p.add_argument("--no-peer", action="store_true", help="skip TorchServe")
    p.add_argument("--no-off", action="store_true", help="skip the batching-off server")
    p.add_argument(
        "--half",
        default="auto",
        help="half types to serve and time besides float32, comma-separated (bf16, fp16), or "
        "none; auto: bf16 on CPU (fp16 on a CPU is slow at batch), fp16 on CUDA (cuDNN will "
        "not keep bf16 RNN weights flat)",
    )
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def half_types(spec: str, device: str) -> list[str]:
    if spec == "auto":
        return ["fp16" if device == "cuda" else "bf16"]
    names = [] if spec == "none" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in HALF_DTYPES]
    if unknown:
        raise SystemExit(f"--half: unknown {unknown}; choose from {sorted(HALF_DTYPES)} or none")
    if "fp16" in names and device != "cuda":
        raise SystemExit("--half fp16 needs --device cuda: the server keeps float32 on a CPU")
    return names


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def body() -> str:
    return json.dumps({"model": serving_model.NAME, "text": serving_model.TEXT_9, "top_k": 5})


def drive(url: str, levels: list[int], args: argparse.Namespace) -> dict[int, hey.LoadResult]:
    out = {}
    for c in levels:
        out[c] = hey.run(url + "/predict", body(), c, args.seconds, args.warmup)
        x = out[c]
        log(f"  c={c}: {x.rps:.1f} req/s, p50 {x.p(50)} s, p99 {x.p(99)} s, failed {x.failed}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    hey.require_hey()
    started = time.monotonic()
    results = Results(
        machine=machine(), command="python -m bench " + shlex.join(argv or sys.argv[1:])
    )
    threads = args.torch_threads or os.cpu_count() or 1
    halves = half_types(args.half, args.device)
    if args.device == "cuda":
        results.machine["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-") as tmp:
        model_dir = Path(tmp) / "models"
        log("building the WikiText-2-size LSTM (vocab 33,278, 2 x 650)")
        cfg = serving_model.build(model_dir, args.data / "train.txt")
        results.machine["model"] = (
            f"LSTM {cfg.num_layers} x {cfg.hidden_size}, embedding {cfg.embedding_size}, "
            f"vocab {cfg.vocab_size:,}, random weights; requests of 9 tokens, top_k 5"
        )

        log(f"raw model in-process, {threads} torch threads")
        torch.set_num_threads(threads)
        loaded = store.load_version(model_dir, serving_model.NAME)
        model = loaded.model.to(args.device)
        tune_decoder(model)  # as the server does at load: the floor is the model as served
        for b in levels:
            results.raw.append(raw.measure(model, b, seconds=max(2.0, args.seconds / 2)))
            log(f"  batch {b}: {results.raw[-1].qps:.1f} queries/s")
        for name in halves:
            half = copy.deepcopy(model).to(HALF_DTYPES[name])
            for b in (1, max(levels)):
                results.raw.append(raw.measure(half, b, seconds=2.0))
                log(f"  {name} batch {b}: {results.raw[-1].qps:.1f} queries/s")
            del half
        words = [w for w in loaded.tokenizer.vocab.itos[2:5002] if w.isalpha()]
        del loaded
        gc.collect()

        env = {"GATEHOUSE_DEVICE": args.device}
        if args.torch_threads:
            env["GATEHOUSE_TORCH_THREADS"] = str(args.torch_threads)
        setups = [(ON, {"GATEHOUSE_MAX_BATCH_SIZE": str(args.max_batch_size)})]
        if not args.no_off:
            setups.append((OFF, {"GATEHOUSE_MAX_BATCH_SIZE": "1"}))
        for name in halves:
            batched = {"GATEHOUSE_MAX_BATCH_SIZE": str(args.max_batch_size)}
            setups.append((on_half(name), {**batched, "GATEHOUSE_HALF": name}))
        for name, extra in setups:
            extra = {**env, **extra}
            if args.max_batch_delay_ms is not None:
                extra["GATEHOUSE_MAX_BATCH_DELAY_MS"] = str(args.max_batch_delay_ms)
            log(f"{name}: {extra}")
            with Server(model_dir, serving_model.NAME, Path(tmp) / "server.log", extra) as srv:
                results.load[name] = drive(srv.url, levels, args)
                if name == ON:
                    for history in (10, 1000):
                        results.sessions.append(
                            session_latency.measure(
                                srv.url, serving_model.NAME, words, history, args.session_steps
                            )
                        )
                        s = results.sessions[-1]
                        log(f"  session step at history {history}: p50 {s.p50 * 1000:.1f} ms")
                    if 1 in levels:
                        results.c1 = c1_check.measure(model, srv.url + "/predict", body())
                        c1 = results.c1
                        log(
                            f"  c=1 interleaved: server p99 {c1.server_p99 * 1000:.1f} ms, raw "
                            f"p50 {c1.raw_p50 * 1000:.1f} / p99 {c1.raw_p99 * 1000:.1f} ms"
                        )
        del model

    if not args.no_peer:
        peer.ensure_venv(log)
        results.load[PEER] = {}
        for c in levels:
            log(f"{PEER}: batch 64, delay 5 ms, c={c}")
            results.load[PEER][c] = peer.run(64, 5, c, int(args.seconds))
        log(f"{PEER_OFF}: c={max(levels)}")
        results.load[PEER_OFF] = {max(levels): peer.run(1, 0, max(levels), int(args.seconds))}

    results.machine["load average at end (1/5/15 min)"] = loadavg()
    results.notes.append(
        f"Gatehouse: max_batch_size {args.max_batch_size}, max_batch_delay_ms "
        f"{args.max_batch_delay_ms or 'server default'}, {threads} torch threads; "
        "TorchServe: batchSize 64, "
        "maxBatchDelay 5 ms, 1 worker (run_peer.sh defaults). Whole run: "
        f"{(time.monotonic() - started) / 60:.1f} min."
    )
    report = markdown(results)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(results), indent=2, default=str))
    missed = [name for name, _, met in targets(results) if not met]
    if missed:
        log("targets missed: " + "; ".join(missed))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
