"""One worker child process seen from the server: spawn, commands, events, exit.

The child gets the job's directory, not its data: everything it needs is on disk. Its stdin
stays open for as long as this server lives; when the server dies (even `kill -9`) the pipe
closes and the child checkpoints and exits, so no worker outlives its server for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from . import spool

log = logging.getLogger("gatehouse.jobs")

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_LINE_LIMIT = 4 << 20  # a final event carries the whole history: allow long lines
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_SECRET_ENV = ("GATEHOUSE_API_KEY", "GATEHOUSE_JOB_STORE")


_SIGNAL_HINTS = {
    signal.SIGKILL: " (the system may have run out of memory)",
    signal.SIGXFSZ: " (a file it wrote hit the file size limit: the disk may be full)",
}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = _SIGNAL_HINTS.get(-code, "")
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"


class WorkerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, job_dir: Path) -> None:
        self.proc = proc
        self.job_dir = job_dir

    @classmethod
    async def spawn(
        cls, job_dir: Path, model_dir: Path, device: str, threads: int
    ) -> WorkerProcess:
        # The worker needs no secrets: the API key and the job store's URL stay here.
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
        # Set before torch loads in the child: OpenMP sizes its pool once, at start-up.
        env.update({name: str(threads) for name in _THREAD_ENV})
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        with open(job_dir / spool.LOG_FILE, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.jobs.worker",
                "--job-dir",
                str(job_dir),
                "--model-dir",
                str(model_dir),
                "--device",
                device,
                "--threads",
                str(threads),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                cwd=str(_PROJECT_ROOT),
                limit=_LINE_LIMIT,
            )
        return cls(proc, job_dir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Each event the worker sends, until it closes its end."""
        assert self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line over the limit: skip what is left of it
                log.warning("worker %s sent an over-long line; skipped", self.pid)
                continue
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("worker %s sent a line that is not JSON: %.200r", self.pid, line)
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                yield event

    async def send(self, command: str) -> None:
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        # A closed pipe means it exited already; whoever waits on it handles that.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.write(f"{command}\n".encode())
            await stdin.drain()

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def wait(self) -> int:
        code = await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return code

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.job_dir / spool.LOG_FILE, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
