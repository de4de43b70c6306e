"""`python -m bench.gpu_quality`: the three kinds under their recipe on WikiText-2, one GPU.

Issue 20's device run, made to fit one lease: LSTM, GRU and tanh RNN at 2 x 650 tied, each
with its `--recipe wt2-medium` settings (models.recipes, docs/recipes.md), trained at the same
time as three processes on the one device for --budget-s seconds of training each, then
scored on valid and test. A time budget becomes a step budget first: a short calibration run
per kind (all at once, so under the same sharing as the real runs) measures tokens/s, and the
step count follows, so the cosine schedule anneals to its end inside the budget. The
calibration also times the LSTM without weight drop and without any regulariser (the plain
fused module), which is the cost of weight drop on the fused path.

Writes to --out: quality.md (the figures), curves.json (validation perplexity by epoch and by
second, per kind), curves.png when matplotlib is importable, and the trainers' logs.
`--dry-run` does all of it on a slice of the corpus with small models and a budget of seconds:
on a CPU it checks the script end to end in a few minutes, before any GPU time is spent.

Prepare the GPU machine with bench/gpu_prepare.sh (it packs the wheels and WikiText-2, test
split included) and run there, carrying [".whl", ".gpu"]:
    python3 -m bench.gpu_quality --data .gpu/data --out $OUT
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from models.device import cpu_name

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "wikitext-2"
KINDS = ("lstm", "gru", "rnn")
# Published and peer anchors the report sets the figures against (docs/recipes.md).
ANCHORS = (
    "AWD-LSTM, WikiText-2 test 65.8 (33M parameters); the pytorch/examples medium LSTM, "
    "valid 112.8 after 9 epochs and ~100-105 in the ~24 epochs that fit 8 minutes"
)
# Extra calibration-only runs: what weight drop costs the fused path, and the plain module.
COST_RUNS = {
    "lstm, recipe without weight drop": ["--arch", "lstm", "--weight-drop", "0"],
    "lstm, plain fused module (no regulariser)": ["--arch", "lstm", "--no-recipe"],
}
# The recipe's 200 warm-up steps would leave a dry run's few steps at almost no lr.
DRY_SIZES = ["--embedding-size", "48", "--hidden-size", "48", "--batch-size", "8"]
DRY_SIZES += ["--warmup-steps", "2"]


def log(msg: str) -> None:
    print(f"[gpu_quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slice_corpus(data: Path, into: Path, lines: int) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", lines), ("valid", lines // 8), ("test", lines // 8)):
        with open(data / f"{split}.txt", encoding="utf-8") as f:
            head = [next(f, "") for _ in range(count)]
        (into / f"{split}.txt").write_text("".join(head), encoding="utf-8")
    return into


def train_cmd(
    args: argparse.Namespace, data: Path, store: Path, name: str, extra: list[str]
) -> list[str]:
    """The `python -m models.train` command line of one run; `--no-recipe` in `extra` drops
    the recipe and keeps its shape, optimiser and schedule with every regulariser off."""
    cmd = [sys.executable, "-m", "models.train"]
    if "--no-recipe" in extra:
        extra = [e for e in extra if e != "--no-recipe"]
        cmd += ["--embedding-size", "650", "--hidden-size", "650", "--num-layers", "2", "--tied"]
        cmd += ["--dropout", "0.4", "--optimizer", "adamw", "--lr", "2e-3", "--clip", "1"]
        cmd += ["--batch-size", "64", "--bptt", "70", "--schedule", "cosine"]
    else:
        cmd += ["--recipe", args.recipe]
    cmd += extra
    cmd += ["--train", str(data / "train.txt"), "--valid", str(data / "valid.txt")]
    cmd += ["--test", str(data / "test.txt"), "--model-dir", str(store), "--name", name]
    cmd += ["--device", args.device, "--progress", "none", "--seed", str(args.seed)]
    if args.dry_run:
        cmd += [*DRY_SIZES, "--num-threads", "1"]
    return cmd


def run_all(cmds: dict[str, list[str]], logs: Path, timeout_s: float) -> dict[str, Any]:
    """Runs the commands at once; each one's JSON summary, or an error string."""
    procs = {}
    for label, cmd in cmds.items():
        log(f"start {label}: {shlex.join(cmd[2:])}")
        f = open(logs / f"{label.split(',')[0].replace(' ', '_')}.log", "a")
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        procs[label] = (
            subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True),
            f,
        )
    deadline = time.monotonic() + timeout_s
    results: dict[str, Any] = {}
    for label, (proc, f) in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            results[label] = f"cut off after {timeout_s:.0f} s"
            f.close()
            continue
        f.close()
        if proc.returncode != 0:
            results[label] = f"failed (exit {proc.returncode}); see the logs"
        else:
            results[label] = json.loads(out.strip().splitlines()[-1])
        log(f"done {label}: {results[label] if isinstance(results[label], str) else 'ok'}")
    return results


def _meta(store: Path, name: str) -> dict[str, Any]:
    from models.store import load_version

    return load_version(store, name).meta


def _plot(curves: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for kind, c in curves.items():
        axes[0].plot(c["epoch"], c["val_ppl"], marker=".", label=kind)
        axes[1].plot(c["seconds"], c["val_ppl"], marker=".", label=kind)
    for ax, xlabel in zip(axes, ("epoch", "seconds of training"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("valid perplexity")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_quality", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="a folder for the report, curves, logs")
    p.add_argument("--data", type=Path, default=DATA, help="WikiText-2: train, valid, test .txt")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--recipe", default="wt2-medium", help="the models.recipes recipe")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds to train")
    p.add_argument(
        "--budget-s", type=float, help="training seconds per kind (default 280; dry run 20)"
    )
    p.add_argument(
        "--calibrate-steps", type=int, help="steps of each calibration (default 150; dry run 4)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--deadline-s", type=float, default=540.0, help="cut the trainings off by then (whole run)"
    )
    p.add_argument("--dry-run", action="store_true", help="a corpus slice, small models, seconds")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: use --device cpu --dry-run to check the script")
    budget = args.budget_s if args.budget_s is not None else (20.0 if args.dry_run else 280.0)
    cal_steps = args.calibrate_steps or (4 if args.dry_run else 150)
    kinds = [k for k in args.kinds.split(",") if k]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name()
    command = "python -m bench.gpu_quality " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# Recipe quality on WikiText-2 ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
    ]
    lines += [f"- device: {card}; torch {torch.__version__}", f"- command: `{command}`"]
    lines += [f"- recipe `{args.recipe}`, {budget:.0f} s of training per kind, kinds at once"]
    with tempfile.TemporaryDirectory(prefix="gatehouse-quality-") as tmp:
        data = slice_corpus(args.data, Path(tmp) / "data", 600) if args.dry_run else args.data
        store = Path(tmp) / "models"
        # 1. Calibration: every kind and the cost runs at once, a few steps each.
        cal = {k: train_cmd(args, data, store, f"cal-{k}", ["--arch", k]) for k in kinds}
        cal.update(
            {
                label: train_cmd(args, data, store, f"cal-{i}", extra)
                for i, (label, extra) in enumerate(COST_RUNS.items())
            }
        )
        for cmd in cal.values():
            cmd += ["--max-steps", str(cal_steps)]
        calibrated = run_all(cal, args.out, timeout_s=240)
        lines += ["", "## Training tokens/s, calibration (all runs at once on the device)", ""]
        lines += ["| run | tokens/s | x plain fused LSTM |", "|---|---:|---:|"]
        plain = calibrated.get("lstm, plain fused module (no regulariser)")
        plain_tps = plain["metrics"]["tokens_per_s"] if isinstance(plain, dict) else math.nan
        for label, res in calibrated.items():
            if isinstance(res, str):
                lines.append(f"| {label} | {res} | |")
                continue
            tps = res["metrics"]["tokens_per_s"]
            lines.append(f"| {label} | {tps:,.0f} | {tps / plain_tps:.2f} |")
        # 2. The real runs: a step budget from each kind's measured pace.
        runs = {}
        for k in kinds:
            res = calibrated.get(k)
            if not isinstance(res, dict):
                continue
            hp_cmd = train_cmd(args, data, store, k, ["--arch", k])
            m = res["metrics"]
            step_tokens = m["batch_size"] * (
                int(_meta(store, f"cal-{k}")["hyperparameters"]["bptt"])
            )
            # 0.9: the calibration's pace includes fewer processes finishing early, not more.
            steps = max(1, int(0.9 * budget * m["tokens_per_s"] / step_tokens))
            runs[k] = [*hp_cmd, "--max-steps", str(steps), "--epochs", "1000"]
        (args.out / "quality.md").write_text("\n".join(lines) + "\n")  # kept if cut off later
        # What a lease allows: the script as a whole stays within --deadline-s.
        left = args.deadline_s - (time.monotonic() - started) - 15
        results = run_all(runs, args.out, timeout_s=max(left, budget))
        shape = "dry run: 48 units, a slice" if args.dry_run else "2 x 650 tied"
        lines += ["", f"## Quality after the budget ({shape}, WikiText-2)", ""]
        lines += [
            "| kind | params | steps | epochs | train s | tokens/s | valid ppl | test ppl "
            "| test / LSTM's |"
        ]
        lines += ["|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        curves: dict[str, Any] = {}
        metrics = {k: r["metrics"] for k, r in results.items() if isinstance(r, dict)}
        lstm_test = metrics.get("lstm", {}).get("test_ppl")
        for k in kinds:
            res = results.get(k, "not run: calibration failed")
            if isinstance(res, str):
                lines.append(f"| {k} | {res} ||||||||")
                continue
            m = res["metrics"]
            ratio = f"{m['test_ppl'] / lstm_test:.3f}" if lstm_test else "-"
            lines.append(
                f"| {k} | {m['params']:,} | {m['steps']} | {m['epochs']} | "
                f"{m['train_seconds']:.0f} | {m['tokens_per_s']:,.0f} | {m['val_ppl']:.1f} | "
                f"{m['test_ppl']:.1f} | {ratio} |"
            )
            history = _meta(store, k)["history"]
            curves[k] = {
                "epoch": [h["epoch"] for h in history],
                "seconds": [h["seconds"] for h in history],
                "val_ppl": [h["val_ppl"] for h in history],
                "train_ppl": [h["train_ppl"] for h in history],
                "lr": [h["lr"] for h in history],
                "metrics": m,
            }
    (args.out / "curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    plotted = _plot(curves, args.out / "curves.png")
    lines += ["", f"Anchors: {ANCHORS}.", ""]
    lines.append("Curves: curves.json" + (", curves.png" if plotted else " (no matplotlib here)"))
    lines += ["", f"Whole run: {(time.monotonic() - started) / 60:.1f} min."]
    (args.out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
