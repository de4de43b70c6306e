"""`python -m bench.gpu`: the GPU checks of issue 6, section 5, as one script (~6 minutes).

On a machine without our dependencies or ../shared, `bench/gpu_prepare.sh` (run here first)
packs what it needs and prints the command to run there.

1. Training throughput against the pytorch/examples anchor (word_language_model, LSTM 650
   tied, dropout 0.5, batch 20, bptt 35, one epoch of WikiText-2 on an H200: ~115k tokens/s,
   valid ppl 230.7). Our trainer runs one epoch in the anchor's shape with the anchor's own
   recipe (SGD, lr 20, clip 0.25), then in ours (Adam, bf16 autocast, batch 64 and 128). The target
   is >= 2x tokens/s at equal or better validation perplexity.
2. The accuracy cost of serving in bf16, on the model trained in step 1.
3. The serving benchmark on CUDA (`python -m bench --device cuda --no-peer`): TorchServe
   needs Java, which the GPU machines lack; its CPU figures are in serving.md.

Everything lands as Markdown in --out (and the logs beside it). `--dry-run` does the same on a
slice of the corpus, a few steps each and short load points: on a CPU it checks the script
end to end in a few minutes, before any GPU time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .machine import cpu_name

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "wikitext-2"
ANCHOR = {"tokens_per_s": 115_000, "val_ppl": 230.7}
SHAPE = ["--arch", "lstm", "--embedding-size", "650", "--hidden-size", "650"]
SHAPE += ["--num-layers", "2", "--dropout", "0.5", "--tied", "--bptt", "35", "--epochs", "1"]
RECIPES = {
    "anchor recipe: SGD lr 20, clip 0.25, batch 20, fp32": [
        *("--optimizer", "sgd", "--lr", "20", "--clip", "0.25", "--batch-size", "20", "--no-amp"),
    ],
    # bf16 autocast is on by default, on CUDA only.
    "ours: Adam, batch 64, bf16 autocast": ["--optimizer", "adam", "--batch-size", "64"],
    "ours: Adam, batch 128, bf16 autocast": ["--optimizer", "adam", "--batch-size", "128"],
}


def log(msg: str) -> None:
    print(f"[gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], log_path: Path) -> str:
    log(" ".join(cmd[2:]))
    with open(log_path, "a") as f:
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log_path}")
    return done.stdout


def slice_corpus(data: Path, into: Path, lines: int) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        with open(data / f"{split}.txt", encoding="utf-8") as f:
            head = [next(f, "") for _ in range(lines if split == "train" else lines // 4)]
        (into / f"{split}.txt").write_text("".join(head), encoding="utf-8")
    return into


def train(args: argparse.Namespace, data: Path, store: Path, out: Path) -> list[str]:
    rows = ["| run | steps | tokens/s | x anchor | valid ppl | anchor ppl | wall s |"]
    rows.append("|---|---:|---:|---:|---:|---:|---:|")
    for i, (label, recipe) in enumerate(RECIPES.items()):
        cmd = [sys.executable, "-m", "models.train", *SHAPE, *recipe]
        cmd += ["--train", str(data / "train.txt"), "--valid", str(data / "valid.txt")]
        cmd += ["--model-dir", str(store), "--name", f"wt2-{i}", "--device", args.device]
        cmd += ["--progress", "none", "--seed", "0"]
        if args.dry_run:
            cmd += ["--max-steps", "3"]
        summary = json.loads(run(cmd, out / "train.log").strip().splitlines()[-1])
        m = summary["metrics"]
        rows.append(
            f"| {label} | {m['steps']} | {m['tokens_per_s']:,.0f} | "
            f"{m['tokens_per_s'] / ANCHOR['tokens_per_s']:.2f}x | {m['val_ppl']:.1f} | "
            f"{ANCHOR['val_ppl']} | {summary['seconds']:.0f} |"
        )
        log(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a folder for the report and logs")
    p.add_argument("--data", type=Path, default=DATA, help="WikiText-2: train.txt, valid.txt")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--dry-run", action="store_true", help="a slice, 3 steps, short load points")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: use --device cpu --dry-run to check the script")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name()
    report = [f"# GPU checks ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    command = "python -m bench.gpu " + shlex.join(sys.argv[1:] if argv is None else argv)
    report += [f"- device: {card}; torch {torch.__version__}", f"- command: `{command}`"]
    with tempfile.TemporaryDirectory(prefix="gatehouse-gpu-") as tmp:
        data = slice_corpus(args.data, Path(tmp) / "data", 400) if args.dry_run else args.data
        store = Path(tmp) / "models"
        report += ["", "## Training, one epoch of WikiText-2 (LSTM 2 x 650 tied, dropout 0.5)", ""]
        report += train(args, data, store, args.out)
        half = [sys.executable, "-m", "bench.half_accuracy", "--model-dir", str(store)]
        half += ["--name", "wt2-1", "--device", args.device, "--text", str(data / "valid.txt")]
        half += ["--windows", "64" if args.dry_run else "512"]
        report += ["", "## bf16 serving accuracy (the batch-64 model above)", ""]
        report += [run(half, args.out / "half.log").strip()]
    serve = [sys.executable, "-m", "bench", "--device", args.device, "--no-peer"]
    serve += ["--out", str(args.out / "serving.md"), "--json", str(args.out / "serving.json")]
    if args.dry_run:
        serve += ["--seconds", "1", "--warmup", "0.5", "--session-steps", "5", "--no-off"]
    run(serve, args.out / "serving.log")
    report += ["", "## Serving on the same device", "", (args.out / "serving.md").read_text()]
    report += ["", f"Whole run: {(time.monotonic() - started) / 60:.1f} min."]
    (args.out / "gpu.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
