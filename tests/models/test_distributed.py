"""Data-parallel training (models.train.distributed) against one process, with real ranks.

Two processes are spawned (torch.multiprocessing, gloo on a free loopback port) and run, in
one process group: an uninterrupted run, a run that rank 0 alone asks to stop with a
checkpoint mid-epoch, and that run resumed. The test compares them with one-process runs of
the same config in this process.

Tolerance. At equal global batch a DDP step computes the same sums as one process's step in
another order (each rank's mean over its rows, then gloo's sum of the two gradients, where one
process reduces all rows at once); float32 makes those differ in the last bits, and Adam and
the recurrence carry the difference on. Measured on this corpus (60 steps) under the default,
avx2 and avx512 kernels: every step's loss within 2.1e-7 relative, each epoch's validation
perplexity within 4.4e-8, the weights within 1.6e-6 (1.3e-5 when the one-process side ran on
another kernel family). RTOL = 1e-5 on losses and perplexities and WTOL = 1e-4 on weights
leave ~50x that spread, and still catch any real difference: training at the per-rank batch
instead of the global one (what a wrong split of the rows amounts to) is off by 0.6 relative.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from models import store
from models.builtin import builtin_text
from models.checkpoint import checkpoint_path
from models.corpus import Corpus, corpus_from_text
from models.train import STOP_CHECKPOINT, TrainConfig, Trainer, TrainingCancelled, train
from models.train.cli import main as cli_main
from models.train.distributed import DistributedTrainer
from models.train.launch import exit_code
from models.train.ranks import check_processes, hidden_rows, rank_rows
from models.train.state import saved_step
from tests.helpers import free_port

RTOL = 1e-5
WTOL = 1e-4
STOP_AFTER = 7  # steps before rank 0 asks for a checkpoint: mid-epoch, state carried
ROOT = Path(__file__).resolve().parents[2]


def tiny_corpus() -> Corpus:
    lines = builtin_text("longrange", seed=3).splitlines()[:150]
    return corpus_from_text("\n".join(lines) + "\n", valid_fraction=0.15, lowercase=True)


def config() -> TrainConfig:
    return TrainConfig(
        arch="lstm",
        embedding_size=16,
        hidden_size=24,
        batch_size=8,
        bptt=12,
        lr=1e-2,
        epochs=2,
        seed=1,
        device="cpu",
        progress_interval_s=0.0,  # a report, so a loss, after every step
        num_threads=1,
    )


def step_losses(events: list[dict[str, Any]]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "step"}


# ---- the ranks ---------------------------------------------------------------------------


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank: the three runs, results written by rank 0 (and each rank's data)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    torch.set_num_threads(1)
    try:
        corpus, cfg, out_dir = tiny_corpus(), config(), Path(out)
        events: list[dict[str, Any]] = []
        trainer = DistributedTrainer(cfg, corpus, events.append, None, None)
        save_file({"data": trainer.data}, str(out_dir / f"data-{rank}.safetensors"))
        whole = trainer.run()

        calls = 0

        def stop() -> str | None:
            nonlocal calls
            calls += 1
            return STOP_CHECKPOINT if rank == 0 and calls == STOP_AFTER else None

        ckdir = out_dir / "ddp-checkpoint"
        stopped_at = None
        try:
            DistributedTrainer(cfg, corpus, None, stop, str(ckdir)).run()
        except TrainingCancelled as e:
            stopped_at = {"step": e.step, "checkpointed": e.checkpointed}
        (out_dir / f"stopped-{rank}.json").write_text(json.dumps(stopped_at))
        if rank == 0:
            shutil.copytree(ckdir, out_dir / "for-one-process")
        dist.barrier()
        resumed = DistributedTrainer(cfg, corpus, None, None, str(ckdir)).run()
        if rank == 0:
            save_file(dict(whole.model.state_dict()), str(out_dir / "whole.safetensors"))
            save_file(dict(resumed.model.state_dict()), str(out_dir / "resumed.safetensors"))
            record = {
                "events": events,
                "history": whole.history,
                "resumed_history": resumed.history,
                "metrics": whole.metrics,
            }
            (out_dir / "rank0.json").write_text(json.dumps(record, allow_nan=True))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(
        _rank, args=(2, free_port(), str(out)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 480  # it took 40-90 s on 2 cores at load averages 15-33
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two ranks did not finish: a collective is waiting forever")
    return out


@pytest.fixture(scope="module")
def one_process() -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return train(config(), tiny_corpus(), callback=events.append), events


def close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---- tests -------------------------------------------------------------------------------


def test_rows_are_shared_out_in_order() -> None:
    data = torch.arange(8 * 5).view(8, 5)
    parts = [rank_rows(data, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(parts), data)
    assert all(p.shape == (2, 5) for p in parts)
    h = torch.randn(2, 8, 3)  # [layers, B, H]
    pair = (h, h + 1)
    got = [hidden_rows(pair, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([g[0] for g in got], dim=1), h)
    assert torch.equal(torch.cat([g[1] for g in got], dim=1), h + 1)
    assert hidden_rows(None, 1, 2) is None


def test_batch_must_divide_by_the_processes() -> None:
    check_processes(8, 2)
    with pytest.raises(ValueError, match="does not divide by 3 processes"):
        check_processes(8, 3)
    with pytest.raises(ValueError, match=">= 1"):
        check_processes(8, 0)


def test_exit_code_of_the_ranks() -> None:
    assert exit_code({1: 2}) == 2
    assert exit_code({0: 130, 1: -15}) == 130  # one stopped, one ended by the agent's SIGTERM
    assert exit_code({0: 1, 1: 2}) == 1
    assert exit_code({1: -9}) == 1


@pytest.mark.numerics
def test_each_rank_trains_its_block_of_the_global_rows(ddp: Path) -> None:
    whole = Trainer(config(), tiny_corpus(), None, None, None).data
    ranks = [load_file(str(ddp / f"data-{r}.safetensors"))["data"] for r in range(2)]
    assert torch.equal(ranks[0], whole[:4]) and torch.equal(ranks[1], whole[4:])


@pytest.mark.numerics
def test_loss_curve_matches_one_process(ddp: Path, one_process: tuple) -> None:
    result, events = one_process
    record = json.loads((ddp / "rank0.json").read_text())
    mine, theirs = step_losses(record["events"]), step_losses(events)
    assert mine.keys() == theirs.keys() and len(mine) == result.metrics["steps"]
    for step, loss in theirs.items():
        assert mine[step] == pytest.approx(loss, rel=RTOL), step
    assert [h["val_ppl"] for h in record["history"]] == pytest.approx(
        [h["val_ppl"] for h in result.history], rel=RTOL
    )
    whole = load_file(str(ddp / "whole.safetensors"))
    assert close_weights(whole, result.model.state_dict()) < WTOL
    assert record["metrics"]["processes"] == 2
    assert record["metrics"]["batch_size"] == 8
    assert record["metrics"]["val_ppl"] == pytest.approx(result.metrics["val_ppl"], rel=RTOL)


@pytest.mark.numerics
def test_the_per_rank_batch_alone_is_outside_the_tolerance(one_process: tuple) -> None:
    # What the curve test would see if the global batch were not kept: it must fail it.
    result, events = one_process
    halved: list[dict[str, Any]] = []
    cfg = TrainConfig(**{**config().to_dict(), "batch_size": 4})
    train(cfg, tiny_corpus(), callback=halved.append)
    a, b = step_losses(events), step_losses(halved)
    worst = max(abs(a[s] - b[s]) / a[s] for s in a.keys() & b.keys())
    assert worst > 100 * RTOL


@pytest.mark.numerics
def test_checkpoint_under_ddp_resumes_under_ddp_and_in_one_process(
    ddp: Path, one_process: tuple
) -> None:
    stopped = [json.loads((ddp / f"stopped-{r}.json").read_text()) for r in range(2)]
    # Only rank 0 asked; both stopped at the same step, with the checkpoint written.
    assert stopped[0] == stopped[1] == {"step": STOP_AFTER, "checkpointed": True}
    record = json.loads((ddp / "rank0.json").read_text())
    whole = load_file(str(ddp / "whole.safetensors"))
    resumed = load_file(str(ddp / "resumed.safetensors"))
    # Same ranks, same order of sums: the resumed run is the uninterrupted one exactly.
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert [h["val_ppl"] for h in record["resumed_history"]] == [
        h["val_ppl"] for h in record["history"]
    ]

    # The checkpoint is the one-process format: one process resumes it as well.
    ck = load_file(str(checkpoint_path(ddp / "for-one-process")))
    assert ck["hidden.0"].shape == (1, 8, 24)  # both ranks' rows, gathered
    alone = train(config(), tiny_corpus(), checkpoint_dir=str(ddp / "for-one-process"))
    assert close_weights(whole, alone.model.state_dict()) < WTOL
    assert [h["val_ppl"] for h in alone.history] == pytest.approx(
        [h["val_ppl"] for h in record["history"]], rel=RTOL
    )
    result, _ = one_process
    assert close_weights(result.model.state_dict(), alone.model.state_dict()) < WTOL
    assert math.isfinite(alone.metrics["val_ppl"])


# ---- the command line --------------------------------------------------------------------


def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    lines = builtin_text("longrange", seed=3).splitlines()[:150]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli_args(tmp_path: Path) -> list[str]:
    return [
        "--arch", "gru", "--train", str(corpus_file(tmp_path)), "--valid-fraction", "0.15",
        "--lowercase", "--epochs", "40", "--max-steps", "40", "--hidden-size", "24",
        "--embedding-size", "16", "--batch-size", "8", "--bptt", "20", "--progress", "none",
        "--model-dir", str(tmp_path / "models"), "--name", "g",
    ]  # fmt: skip


def test_cli_refuses_a_batch_that_does_not_divide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main([*cli_args(tmp_path), "--nproc", "3"]) == 2  # before any process starts
    assert "batch_size 8 does not divide by 3 processes" in capsys.readouterr().err
    assert store.list_names(tmp_path / "models") == []


@pytest.mark.numerics
def test_cli_stops_every_rank_with_a_checkpoint_and_one_process_resumes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckdir = tmp_path / "ck"
    args = [*cli_args(tmp_path), "--checkpoint-dir", str(ckdir)]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "models.train", *args, "--nproc", "2"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the ranks go with it
    )

    def end_all() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)

    watchdog = threading.Timer(480, end_all)  # a hang fails the test, never blocks it
    watchdog.start()
    try:
        assert launcher.stderr is not None
        for line in launcher.stderr:  # rank 0 says so once every rank has joined
            if line.startswith("corpus:"):
                break
        launcher.send_signal(signal.SIGTERM)  # the launcher passes it to the ranks
        out, err = launcher.communicate()
    finally:
        watchdog.cancel()
        end_all()
    assert launcher.returncode == 130, err
    assert "stopped at step" in err and out == ""
    step = saved_step(ckdir)
    assert step is not None and 0 < step < 40
    assert store.list_names(tmp_path / "models") == []

    # The same command without --nproc: one process resumes the two ranks' checkpoint.
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["version"] == 1 and summary["metrics"]["steps"] == 40
    assert store.list_versions(tmp_path / "models", "g") == [1]
