"""The training process: `python -m service.jobs.worker --job-dir D --model-dir M`.

It trains one job from its directory (spec, corpus, checkpoints) and saves the version; it
knows nothing of the server, the database or HTTP.

Protocol with the server:
* events go out as JSON lines on the process's original stdout (anything a library prints
  is sent to stderr instead, which is the job's log file);
* commands come in on stdin, one per line (protocol.COMMANDS). End of stdin means the server
  is gone (even `kill -9`): the worker checkpoints and exits rather than train on unobserved.
* the exit status says how it ended (protocol.EXIT_*).

The version carries the job id in its meta.json, so a worker that finds its job's version
already saved (the server died between the save and recording it) reports that version
instead of training a second one. A lock file keeps two workers off one job.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from . import spool
from .protocol import (
    CANCEL,
    CANCELLED,
    CHECKPOINT,
    COMMANDS,
    CORPUS,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
    FAILED,
    PROGRESS,
    STARTED,
    STOPPED,
    SUCCEEDED,
    stronger,
)

LOCK_WAIT_S = 60.0  # a worker of an earlier server may still be writing its checkpoint
ORPHAN_GRACE_S = 30.0  # after the server is gone, give the checkpoint this long, then exit

log = logging.getLogger("gatehouse.worker")


class Control:
    """Commands from the server, read on a thread; `should_stop` is train()'s hook."""

    def __init__(self) -> None:
        self.request: str | None = None
        self.orphaned = False

    def ask(self, command: str) -> None:
        self.request = stronger(self.request, command)

    def should_stop(self) -> str | None:
        return self.request

    def read_commands(self, stream: IO[str]) -> None:
        for line in stream:
            command = line.strip()
            if command in COMMANDS:
                self.ask(command)
        self.orphaned = True
        self.ask(CHECKPOINT)
        # If training is stuck in a long step, leave anyway: the last checkpoint stands.
        timer = threading.Timer(ORPHAN_GRACE_S, os._exit, args=(EXIT_STOPPED,))
        timer.daemon = True
        timer.start()


class Emitter:
    """JSON lines to the server; a closed pipe (server gone) silently drops them."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.broken = False

    def emit(self, event: str, **data: Any) -> None:
        if self.broken:
            return
        try:
            self.out.write(json.dumps({"event": event, **data}, default=str) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.broken = True


def lower_priority(threads: int) -> None:
    """Serving comes first: the lowest CPU class and niceness, and few threads."""
    # SCHED_IDLE: runs only on cycles no normal-priority thread wants. Threads created
    # later (torch's pool) inherit it. Not every platform has it; niceness is the fallback.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(19)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work already ran
        torch.set_num_interop_threads(1)


def take_lock(job_dir: Path) -> IO[bytes]:
    f = open(job_dir / spool.LOCK_FILE, "ab")  # held for the process's life
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            if time.monotonic() > deadline:
                f.close()
                raise RuntimeError(
                    f"another worker still holds job {job_dir.name} after {LOCK_WAIT_S:.0f}s"
                ) from None
            time.sleep(0.2)


def saved_version(model_dir: Path, name: str, job_id: str) -> tuple[int, dict[str, Any]] | None:
    """The version an earlier attempt of this job already saved, if any."""
    from models import store

    for version in reversed(store.list_versions(model_dir, name)):
        try:
            meta = store.read_meta(model_dir, name, version)
        except store.StoreError:
            continue
        if meta.get("job_id") == job_id:
            return version, meta
    return None


def checkpoint_step(checkpoint_dir: Path) -> int | None:
    """The step a checkpoint left by an earlier attempt holds; None when there is none."""
    from models.checkpoint import CheckpointError
    from models.train.state import saved_step

    try:
        return saved_step(checkpoint_dir)
    except CheckpointError:
        return None  # train() reports the broken checkpoint as the job's error


def load_corpus(job_dir: Path, source: dict[str, Any], options: dict[str, Any]) -> Any:
    from models import corpus as corpora

    kind = source["kind"]
    held_out = {"valid_fraction": source.get("valid_fraction") or 0.1, **options}
    if kind == "builtin":
        loaded = corpora.corpus_from_builtin(source["name"], source.get("seed", 0), **options)
    elif kind == "dataset" and source.get("splits"):
        base = job_dir / spool.CORPUS_DIR
        test = base / "test.txt"
        loaded = corpora.corpus_from_splits(
            base / "train.txt",
            base / "valid.txt",
            test if test.is_file() else None,
            description=source["description"],
            **options,
        )
    else:
        path = job_dir / (spool.CORPUS_DIR if source.get("dir") else spool.CORPUS_FILE)
        loaded = corpora.corpus_from_path(path, description=source["description"], **held_out)
    loaded.source = {k: v for k, v in source.items() if k not in ("description", "dir")}
    return loaded


class TooBig(Exception):
    """The model this corpus makes is over the operator's parameter limit."""


def check_size(cfg: Any, vocab_size: int, max_params: int | None) -> None:
    from .bounds import estimate_params

    params = estimate_params(
        cfg.arch, vocab_size, cfg.embedding_size, cfg.hidden_size, cfg.num_layers, cfg.tied
    )
    if max_params is not None and params > max_params:
        raise TooBig(
            f"with this corpus's vocabulary of {vocab_size} words the model would have "
            f"{params} parameters, over the limit of {max_params} "
            "(GATEHOUSE_TRAIN_MAX_PARAMS): set max_vocab lower or the sizes smaller"
        )


def _describe(e: BaseException) -> str:
    import torch

    from models.corpus import CorpusError
    from models.train import TrainingError

    if isinstance(e, CorpusError):
        return f"unusable corpus: {e}"
    if isinstance(e, (TrainingError, TooBig)):
        return str(e)
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return f"out of memory while training: {e}".rstrip(": ")
    io = as_os_error(e)
    if io is not None:
        return f"training stopped: {_io_failure(io)}"
    return f"training failed: {type(e).__name__}: {e}"


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def as_os_error(e: BaseException) -> OSError | None:
    """The failed system call behind `e`: an OSError, or safetensors' own error type, which
    wraps one as text ("I/O error: No space left on device (os error 28)")."""
    if isinstance(e, OSError) and e.errno is not None:
        return e
    found = _OS_ERROR.search(str(e))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def _io_failure(e: OSError) -> str:
    """A failed read or write, told without the path (the server's log has it)."""
    code = errno.errorcode.get(e.errno or 0, "?")
    hint = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EFBIG: "a file hit the file size limit",
        errno.EIO: "the disk failed",
        errno.EACCES: "the model store is not writable",
        errno.EPERM: "the model store is not writable",
        errno.EROFS: "the model store is on a read-only file system",
    }.get(e.errno or 0, "the disk refused it")
    return f"a file could not be written ({code}: {e.strerror}): {hint}"


def run(job_dir: Path, model_dir: Path, device: str, threads: int, emitter: Emitter) -> int:
    control = Control()
    threading.Thread(
        target=control.read_commands, args=(sys.stdin,), name="commands", daemon=True
    ).start()
    signal.signal(signal.SIGTERM, lambda *_: control.ask(CHECKPOINT))

    lower_priority(threads)
    from models import store
    from models.train import TrainConfig, TrainingCancelled, build_meta, train

    spec = spool.read_spec(job_dir)
    job_id, name = spec["job_id"], spec["name"]
    _lock = take_lock(job_dir)
    found = saved_version(model_dir, name, job_id)
    if found is not None:
        version, meta = found
        log.info("job %s already saved %s@%s before an interruption", job_id, name, version)
        emitter.emit(
            SUCCEEDED,
            version=version,
            metrics=meta.get("metrics") or {},
            history=meta.get("history") or [],
        )
        return EXIT_SUCCEEDED

    source = spec["corpus"]
    cfg = TrainConfig.from_dict(
        {
            **spec["train"],
            "arch": spec["arch"],
            "lowercase": source.get("lowercase", source["kind"] == "builtin"),
            "device": device,
            "num_threads": threads,
        }
    )
    checkpoint_dir = job_dir / spool.CHECKPOINT_DIR
    emitter.emit(STARTED, config=cfg.to_dict(), resumed_step=checkpoint_step(checkpoint_dir))
    try:
        corpus = load_corpus(job_dir, source, cfg.corpus_options())
        emitter.emit(CORPUS, corpus=corpus.info())
        check_size(cfg, len(corpus.tokenizer.vocab), spec.get("max_params"))
        result = train(
            cfg,
            corpus,
            callback=lambda info: emitter.emit(PROGRESS, info=info),
            should_stop=control.should_stop,
            checkpoint_dir=str(checkpoint_dir),
        )
    except TrainingCancelled as e:
        if control.request == CANCEL:
            emitter.emit(CANCELLED, step=e.step)
            return EXIT_CANCELLED
        emitter.emit(STOPPED, step=e.step, checkpointed=e.checkpointed)
        return EXIT_STOPPED
    except Exception as e:  # every failure becomes a readable reason for the job record
        traceback.print_exc()
        emitter.emit(FAILED, error=_describe(e))
        return EXIT_FAILED
    if control.request == CANCEL:
        # Asked to cancel after the last step: honour it, no version.
        emitter.emit(CANCELLED, step=result.metrics.get("steps"))
        return EXIT_CANCELLED
    meta = build_meta(result, corpus)
    meta["job_id"] = job_id
    try:
        version = store.save_version(model_dir, name, result.model, result.tokenizer, meta)
    except Exception as e:  # a full or failing disk: the store left no partial version behind
        io = as_os_error(e)
        if io is None:
            raise
        traceback.print_exc()
        error = f"saving {name} failed, no version was created: {_io_failure(io)}"
        emitter.emit(FAILED, error=error)
        return EXIT_FAILED
    log.info("job %s saved %s@%s", job_id, name, version)
    emitter.emit(SUCCEEDED, version=version, metrics=result.metrics, history=result.history)
    return EXIT_SUCCEEDED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.jobs.worker")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    # Keep the event channel for ourselves; stray prints from libraries go to the log.
    events = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    emitter = Emitter(events)
    try:
        return run(args.job_dir, args.model_dir, args.device, args.threads, emitter)
    except Exception as e:  # set-up failures (unreadable spec, lock) still get reported
        traceback.print_exc()
        emitter.emit(FAILED, error=f"worker could not run the job: {type(e).__name__}: {e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
