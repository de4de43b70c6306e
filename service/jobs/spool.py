"""Each job's directory, `<model_dir>/.jobs/<id>/`: its spec, its corpus, its checkpoints.

A job directory is assembled under a staging name and renamed into place, so one either
exists complete (spec and corpus, fsynced) or not at all. The leading dot keeps the store's
model listing from ever taking it for a model name.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import IO, Any

from models.store import fsync_path

JOBS_DIR = ".jobs"
STAGING_PREFIX = ".staging-"
SPEC_FILE = "job.json"
CORPUS_FILE = "corpus.txt"  # inline text, an upload, or a single-file dataset
CORPUS_DIR = "corpus"  # a directory dataset, copied with its layout
CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "worker.log"
LOCK_FILE = "lock"
QUEUE_LOCK = ".queue.lock"
_COPY_CHUNK = 1 << 20


def jobs_root(model_dir: Path) -> Path:
    return Path(model_dir) / JOBS_DIR


def job_dir(model_dir: Path, job_id: str) -> Path:
    return jobs_root(model_dir) / job_id


class TooLarge(Exception):
    """More corpus bytes than allowed; nothing of the job is kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"corpus over the limit of {limit} bytes")
        self.limit = limit


class Staging:
    """A job directory being built; `commit` publishes it, `discard` (or an error) drops it."""

    def __init__(self, model_dir: Path, job_id: str, max_bytes: int) -> None:
        self.job_id = job_id
        self.max_bytes = max_bytes
        self.bytes = 0
        self.final = job_dir(model_dir, job_id)
        self.path = jobs_root(model_dir) / f"{STAGING_PREFIX}{job_id}"
        self.path.mkdir(parents=True, exist_ok=False)
        self._open: Any = None
        self._written: list[Path] = []

    def _count(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise TooLarge(self.max_bytes)

    # ---- the corpus, one of three ways ----------------------------------------------
    def write_text(self, text: str) -> None:
        data = text.encode("utf-8")
        self._count(len(data))
        path = self.path / CORPUS_FILE
        path.write_bytes(data)
        self._written.append(path)

    def write_chunk(self, chunk: bytes) -> None:
        """Append streamed upload bytes to the corpus file; over the limit raises TooLarge."""
        self._count(len(chunk))
        if self._open is None:
            path = self.path / CORPUS_FILE
            self._open = open(path, "wb")  # closed in close_upload/discard
            self._written.append(path)
        self._open.write(chunk)

    def close_upload(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None

    def copy_files(self, files: list[tuple[Path, str]]) -> None:
        """Copy (source, relative target) pairs, counting bytes as they are read."""
        for src, rel in files:
            target = self.path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin, open(target, "wb") as fout:
                while chunk := fin.read(_COPY_CHUNK):
                    self._count(len(chunk))
                    fout.write(chunk)
            self._written.append(target)

    # ---- publish or drop ----------------------------------------------------------------
    def commit(self, spec: dict[str, Any]) -> Path:
        self.close_upload()
        spec_path = self.path / SPEC_FILE
        spec_path.write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n", "utf-8")
        for path in [*self._written, spec_path]:
            fsync_path(path)
        for d in {p.parent for p in self._written} | {self.path}:
            fsync_path(d)
        os.rename(self.path, self.final)
        fsync_path(self.final.parent)
        return self.final

    def discard(self) -> None:
        self.close_upload()
        shutil.rmtree(self.path, ignore_errors=True)


def own_queue(model_dir: Path) -> IO[bytes] | None:
    """Take the job queue of this store for this process; None when another server has it.

    The lock lives as long as the returned file stays open (the kernel drops it when the
    process dies, `kill -9` included). Workers do not inherit it: subprocesses close fds.
    """
    root = jobs_root(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / QUEUE_LOCK, "ab")  # the caller holds it open
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def read_spec(directory: Path) -> dict[str, Any]:
    spec = json.loads((directory / SPEC_FILE).read_text("utf-8"))
    if not isinstance(spec, dict):
        raise ValueError(f"{directory / SPEC_FILE}: not a JSON object")
    return spec


def remove(model_dir: Path, job_id: str) -> None:
    shutil.rmtree(job_dir(model_dir, job_id), ignore_errors=True)


def cleanup(model_dir: Path, keep: set[str], min_staging_age_s: float = 60.0) -> list[str]:
    """Drop directories no job record owns: staging leftovers and ended or unknown jobs.

    Staging directories younger than `min_staging_age_s` may belong to a submission in
    progress in this very process, so they stay.
    """
    root = jobs_root(model_dir)
    removed: list[str] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(STAGING_PREFIX):
            if now - entry.stat(follow_symlinks=False).st_mtime < min_staging_age_s:
                continue
        elif entry.name in keep:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.name)
    return removed
