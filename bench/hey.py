"""HTTP load with `hey` (Debian package), and its summary parsed into numbers."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_PCT = re.compile(r"^\s*(\d+)%\s+in\s+([0-9.]+)\s+secs", re.M)
_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+)\s+responses", re.M)
_ERROR = re.compile(r"^\s*\[(\d+)\]\s+(.+)$", re.M)


@dataclass
class LoadResult:
    rps: float
    percentiles: dict[int, float]  # percent -> seconds
    statuses: dict[int, int]
    errors: dict[str, int] = field(default_factory=dict)  # transport errors (no response)

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300) + sum(
            self.errors.values()
        )

    def p(self, percent: int) -> float | None:
        return self.percentiles.get(percent)


def parse(summary: str) -> LoadResult:
    rps = _RPS.search(summary)
    statuses = {int(c): int(n) for c, n in _STATUS.findall(summary)}
    errors: dict[str, int] = {}
    if "Error distribution:" in summary:
        tail = summary.split("Error distribution:", 1)[1]
        errors = {msg.strip(): int(n) for n, msg in _ERROR.findall(tail)}
    return LoadResult(
        rps=float(rps.group(1)) if rps else 0.0,
        percentiles={int(p): float(s) for p, s in _PCT.findall(summary)},
        statuses=statuses,
        errors=errors,
    )


def require_hey() -> str:
    path = shutil.which("hey")
    if path is None:
        raise SystemExit("`hey` is not installed: `make system-deps` (or apt-get install hey)")
    return path


def run(url: str, body: str, concurrency: int, seconds: float, warmup_s: float = 2.0) -> LoadResult:
    """Closed-loop load: `concurrency` clients, each sending the next request on an answer."""
    hey = require_hey()
    base = [hey, "-c", str(concurrency), "-m", "POST", "-T", "application/json", "-d", body]
    timeout = str(int(seconds + 60))
    if warmup_s > 0:
        subprocess.run(
            [*base, "-z", f"{warmup_s}s", "-t", timeout, url],
            check=True,
            capture_output=True,
        )
    out = subprocess.run(
        [*base, "-z", f"{seconds}s", "-t", timeout, url],
        check=True,
        capture_output=True,
        text=True,
    )
    return parse(out.stdout)
