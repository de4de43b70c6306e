"""The comparison written out: a markdown page, its PNG plots and its data (`--report PATH.md`).

The plots go to a folder beside the page named after it (docs/comparison.md ->
docs/comparison/): validation perplexity against epochs and against training seconds, and
long-range accuracy by gap on the built-in corpus's prompts. The same folder gets
`report.json`, the figures the page's comparison view draws (`gatehouse serve
--comparison-report docs/comparison/report.json`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.compare_sizes import Size
from models.json_values import json_safe

Row = dict[str, Any]
# mkstemp makes files only their owner may read; a page, its plots and the report a server
# (often another user) reads are meant to be read by everyone, as `open` would leave them.
_READABLE = 0o644


def _replace_atomically(path: Path, fill: Callable[[str], object]) -> None:
    """`fill(tmp)` writes a file beside `path`, which is then renamed over it: a reader sees
    the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, _READABLE)
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def train_seconds(entry: dict[str, Any], tokens_per_step: int) -> float:
    """Seconds of training (validation excluded) up to a history entry."""
    tps = entry.get("tokens_per_s") or 0.0
    return entry["step"] * tokens_per_step / tps if tps > 0 else math.nan


def _plot(
    path: Path,
    series: dict[str, tuple[list[float], list[float]]],
    xlabel: str,
    ylabel: str,
    log_y: bool,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        _replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100))
    finally:
        plt.close(fig)


def write_plots(rows: list[Row], folder: Path, tokens_per_step: int) -> list[str]:
    """The PNGs for `rows` (one per kind); returns their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    by_epoch = {
        r["arch"]: ([h["epoch"] for h in r["history"]], [h["val_ppl"] for h in r["history"]])
        for r in rows
    }
    by_time = {
        r["arch"]: (
            [train_seconds(h, tokens_per_step) for h in r["history"]],
            [h["val_ppl"] for h in r["history"]],
        )
        for r in rows
    }
    names = ["val_ppl_by_epoch.png", "val_ppl_by_seconds.png"]
    _plot(folder / names[0], by_epoch, "epoch", "validation perplexity", log_y=True)
    _plot(folder / names[1], by_time, "training seconds", "validation perplexity", log_y=True)
    gaps = {r["arch"]: r["long_range_by_gap"] for r in rows if r.get("long_range_by_gap")}
    if gaps:
        series = {a: ([int(g) for g in by], list(by.values())) for a, by in gaps.items()}
        names.append("long_range_by_gap.png")
        _plot(folder / names[2], series, "gap (filler sentences)", "top-1 accuracy", log_y=False)
    return names


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def kernels_of(device: str) -> str:
    """What the timings measured: cuDNN's fused kernels on CUDA, PyTorch's CPU kernels else."""
    return "cuDNN kernels" if str(device).startswith("cuda") else "CPU kernels"


def gru_verdict(rows: list[Row], kernels: str = "CPU kernels") -> str:
    """Whether "GRU is faster" held here, from the core kernel timings and training speed."""
    by = {r["arch"]: r for r in rows}
    if "gru" not in by or "lstm" not in by:
        return "GRU and LSTM were not both run: no verdict."
    g, lstm = by["gru"], by["lstm"]
    core = lstm["core_train_ms"] / g["core_train_ms"]
    fwd = lstm["core_forward_ms"] / g["core_forward_ms"]
    train = g["tokens_per_s"] / lstm["tokens_per_s"]
    held = "holds" if core > 1.0 and train > 1.0 else "does not hold"
    return (
        f'"GRU is faster" {held} for the {kernels} at equal parameter count: the GRU\'s '
        f"recurrent layers ran a training step (forward+backward) in {g['core_train_ms']:.1f} ms "
        f"against the LSTM's {lstm['core_train_ms']:.1f} ms ({core:.2f}x), a forward pass in "
        f"{g['core_forward_ms']:.1f} against {lstm['core_forward_ms']:.1f} ms ({fwd:.2f}x), "
        f"and the whole model trained at {g['tokens_per_s']:,.0f} against "
        f"{lstm['tokens_per_s']:,.0f} tokens/s ({train:.2f}x)."
    )


def markdown(
    rows: list[Row],
    sizes: dict[str, Size],
    setup: dict[str, Any],
    plots: list[str],
    folder: str,
    verdict: str,
) -> str:
    """The page: setup, sizes, the results table, the verdict and the plots."""
    lines = ["# RNN, LSTM and GRU at equal parameter count", ""]
    lines += [f"- {k}: {v}" for k, v in setup.items()]
    lines += [
        "",
        "## Sizes",
        "",
        "| kind | hidden | recurrent params | total params |",
        "|---|---|---|---|",
    ]
    for arch, s in sizes.items():
        lines.append(f"| {arch} | {s.hidden_size} | {s.recurrent_params:,} | {s.total_params:,} |")
    lines += [
        "",
        "## Results",
        "",
        "| kind | epochs | steps | train s | train tok/s | serve tok/s | core fwd ms | "
        "core fwd+bwd ms | best valid ppl | test ppl | long-range acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['epochs']} | {r['steps']} | {_fmt(r['train_seconds'], '.0f')} | "
            f"{_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['serve_tokens_per_s'], ',.0f')} | "
            f"{_fmt(r['core_forward_ms'], '.1f')} | {_fmt(r['core_train_ms'], '.1f')} | "
            f"{_fmt(r['val_ppl'], '.1f')} | {_fmt(r.get('test_ppl'), '.1f')} | "
            f"{_fmt(r.get('long_range_acc'), '.3f')} |"
        )
    if any(r.get("long_range_by_gap") for r in rows):
        gaps = sorted({int(g) for r in rows for g in r.get("long_range_by_gap", {})})
        lines += [
            "",
            "Long-range accuracy by gap (built-in corpus):",
            "",
            "| kind | " + " | ".join(f"gap {g}" for g in gaps) + " |",
            "|---|" + "---|" * len(gaps),
        ]
        for r in rows:
            by = r.get("long_range_by_gap") or {}
            lines.append(
                f"| {r['arch']} | " + " | ".join(_fmt(by.get(str(g)), ".2f") for g in gaps) + " |"
            )
    lines += ["", "## Is the GRU faster?", "", verdict, ""]
    lines += [f"![{p[:-4]}]({folder}/{p})" for p in plots]
    return "\n".join(lines) + "\n"


REPORT_FORMAT = 1  # report.json's layout; the page's comparison view reads this version
_NOT_FIGURES = ("history", "long_range_by_gap", "long_range_acc_by_gap")


def report_data(
    rows: list[Row],
    sizes: dict[str, Size],
    setup: dict[str, Any],
    tokens_per_step: int,
    verdict: str,
) -> dict[str, Any]:
    """What report.json holds: the setup, the sizes, per kind its figures and its validation
    curve (epoch, step, training seconds, perplexities), and the verdict."""
    kinds = []
    for r in rows:
        curve = [
            {
                "epoch": h["epoch"],
                "step": h["step"],
                "seconds": train_seconds(h, tokens_per_step),
                "val_ppl": h["val_ppl"],
                "train_ppl": h.get("train_ppl"),
            }
            for h in r["history"]
        ]
        figures = {k: v for k, v in r.items() if k not in _NOT_FIGURES}
        kinds.append({**figures, "long_range_by_gap": r.get("long_range_by_gap"), "curve": curve})
    return json_safe(
        {
            "format": REPORT_FORMAT,
            "setup": setup,
            "sizes": [asdict(s) for s in sizes.values()],
            "kinds": kinds,
            "verdict": verdict,
        }
    )


def write_report(
    path: str, rows: list[Row], sizes: dict[str, Size], setup: dict[str, Any], tokens_per_step: int
) -> None:
    """`path` (markdown), its plots and report.json in the folder named after it, each file
    written atomically."""
    page = Path(path)
    folder = page.with_suffix("")
    plots = write_plots(rows, folder, tokens_per_step)
    verdict = gru_verdict(rows, kernels_of(setup.get("device", "cpu")))
    data = report_data(rows, sizes, setup, tokens_per_step, verdict)
    text = json.dumps(data, indent=1) + "\n"
    _replace_atomically(folder / "report.json", lambda t: Path(t).write_text(text, "utf-8"))
    text = markdown(rows, sizes, setup, plots, folder.name, verdict)
    _replace_atomically(page, lambda t: Path(t).write_text(text, "utf-8"))
