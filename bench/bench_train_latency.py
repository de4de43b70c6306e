"""/predict latency while a training job runs, against the same server with the job paused.

    python -m bench.bench_train_latency [--seconds 15] [--concurrency 8] [--qps 0] [--rounds 3]

Starts the real server on a temporary store holding one LSTM of the WikiText-2 "medium" size
(vocab 33,278, embedding 650, 2 x 650, random weights: the cost of a forward pass does not
depend on training), drives POST /predict with `hey` (9-token texts, top-5), then starts a
training job through POST /train. Windows alternate between the job's worker paused
(SIGSTOP: the same server, the same job, no training CPU) and training, `--rounds` times, so
a change in the machine's load hits both kinds alike; the figure is the ratio of the medians.

`--modes lowered,normal` then repeats that with the worker put back to normal priority (every
thread SCHED_OTHER, nice 0) to show what the lowered priority buys.
Target: p99 while training <= 2x p99 with the job paused, on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 2.0
JOB = {
    "name": "bench-job",
    "arch": "lstm",
    "corpus": {"builtin": "longrange"},
    "epochs": 50,
    "hidden_size": 256,
    "embedding_size": 256,
    "batch_size": 32,
    "bptt": 35,
}


def make_store(model_dir: Path, vocab: int, size: int, layers: int) -> None:
    import torch

    from models import store
    from models.lm import RNNLM, ModelConfig
    from models.tokenizer import Tokenizer, Vocab

    torch.manual_seed(0)
    tok = Tokenizer(Vocab(["<unk>", "<eos>", *(f"w{i}" for i in range(vocab - 2))]))
    model = RNNLM(ModelConfig("lstm", vocab, size, size, layers, 0.5, tied=True)).eval()
    store.save_version(model_dir, "lstm", model, tok, {"metrics": {}})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hey(url: str, body: str, seconds: float, concurrency: int, qps: float) -> dict[str, float]:
    """One `hey` window; percentiles computed here from every request's time (hey's CSV)."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-o", "csv"]
    cmd += ["-T", "application/json", "-d", body]
    if qps > 0:
        cmd += ["-q", str(qps)]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    bad = [r["status-code"] for r in rows if r["status-code"] != "200"]
    if bad or len(rows) < 20:
        raise RuntimeError(f"{len(rows)} answers, non-200: {sorted(set(bad))}")
    times = sorted(float(r["response-time"]) for r in rows)
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {
        "n": len(rows),
        "rps": len(rows) / seconds,
        "p50_ms": 1000 * cuts[49],
        "p99_ms": 1000 * cuts[98],
    }


def job_steps(client: httpx.Client, job_id: str) -> tuple[float, int]:
    found = client.get(f"/jobs/{job_id}").json()
    return time.monotonic(), int(found["metrics"].get("step") or 0)


def worker_tids() -> list[tuple[int, int]]:
    """(pid, tid) of every thread of every job worker process."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        if b"service.jobs.worker" in cmd:
            out += [(int(pid), int(t)) for t in tids]
    return out


def normal_priority() -> None:
    for _, tid in worker_tids():
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, 0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("hey") is None:
        sys.exit("needs `hey` (apt-get install hey, or `make system-deps`)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    make_store(tmp / "models", args.vocab, args.size, args.layers)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GATEHOUSE_JOB_THREADS": str(args.job_threads)}
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--model-dir", str(tmp / "models")]
    log = open(tmp / "server.log", "wb")  # closed in finally
    server = subprocess.Popen(
        [*cmd, "--no-bootstrap", "--log-level", "warning"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    body = json.dumps({"text": "w17 w5 w3000 w42 w7 w999 w12 w8 w100", "model": "lstm", "top_k": 5})
    rows: list[dict[str, Any]] = []
    try:
        client = httpx.Client(base_url=url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError((tmp / "server.log").read_text())
            time.sleep(0.3)
        drive = lambda: hey(url + "/predict", body, args.seconds, args.concurrency, args.qps)  # noqa: E731
        for _ in range(20):  # warm-up: first forward passes allocate
            client.post("/predict", content=body, headers={"content-type": "application/json"})
        rows.append({"window": "no job", **drive()})

        answer = client.post("/train", json=JOB)
        if answer.status_code != 202:
            raise RuntimeError(f"POST /train: {answer.status_code} {answer.text}")
        job_id = answer.json()["job_id"]
        while client.get(f"/jobs/{job_id}").json()["metrics"].get("step", 0) < 1:
            time.sleep(0.5)  # the worker imported torch and trains
        t0, s0 = job_steps(client, job_id)
        time.sleep(args.seconds)
        t1, s1 = job_steps(client, job_id)
        alone = (s1 - s0) / (t1 - t0)
        pids = sorted({pid for pid, _ in worker_tids()})
        for mode in args.modes:
            if mode == "normal":
                normal_priority()
            for _ in range(args.rounds):
                # Paused worker vs running worker, alternating: on a shared machine a load
                # change then hits both kinds of window alike.
                for pid in pids:
                    os.kill(pid, signal.SIGSTOP)
                rows.append({"window": f"job paused ({mode})", **drive()})
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
                t0, s0 = job_steps(client, job_id)
                result = drive()
                t1, s1 = job_steps(client, job_id)
                steps = (s1 - s0) / (t1 - t0)
                rows.append({"window": f"job training ({mode})", **result, "steps_s": steps})
        client.delete(f"/jobs/{job_id}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for mode in args.modes:
        idle = statistics.median(r["p99_ms"] for r in rows if r["window"] == f"job paused ({mode})")
        busy = statistics.median(
            r["p99_ms"] for r in rows if r["window"] == f"job training ({mode})"
        )
        summary[mode] = {"idle_p99_ms": idle, "busy_p99_ms": busy, "ratio": busy / idle}
    return {"rows": rows, "summary": summary, "train_steps_per_s_alone": alone}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--qps", type=float, default=0.0, help="per hey worker; 0: no limit")
    parser.add_argument("--job-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="paused/training window pairs")
    parser.add_argument("--modes", default="lowered", help="comma list of lowered,normal")
    parser.add_argument("--vocab", type=int, default=33278)
    parser.add_argument("--size", type=int, default=650)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    load_before = os.getloadavg()[0]
    out = run(args)
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, load average before "
        f"{load_before:.2f}, python {platform.python_version()}"
    )
    print(f"# {' '.join(sys.argv)}")
    print("| window | requests | req/s | p50 ms | p99 ms | training steps/s |")
    print("|---|---|---|---|---|---|")
    for r in out["rows"]:
        steps = r.get("steps_s")
        print(
            f"| {r['window']} | {r['n']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {'' if steps is None else f'{steps:.1f}'} |"
        )
    print(f"\ntraining alone (no requests): {out['train_steps_per_s_alone']:.1f} steps/s")
    for mode, s in out["summary"].items():
        print(
            f"worker {mode}: median p99 {s['busy_p99_ms']:.1f} ms training vs "
            f"{s['idle_p99_ms']:.1f} ms paused: ratio {s['ratio']:.2f}"
        )
    ok = out["summary"].get("lowered", {"ratio": 0})["ratio"] <= TARGET_RATIO
    print(f"target p99 <= {TARGET_RATIO}x idle p99: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
