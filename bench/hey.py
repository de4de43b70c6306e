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


def _command(url: str, body: str, concurrency: int, seconds: float) -> list[str]:
    return [
        *(require_hey(), "-c", str(concurrency), "-z", f"{seconds}s", "-t", str(int(seconds + 60))),
        *("-m", "POST", "-T", "application/json", "-d", body, url),
    ]


def run(url: str, body: str, concurrency: int, seconds: float, warmup_s: float = 2.0) -> LoadResult:
    """Closed-loop load: `concurrency` clients, each sending the next request on an answer."""
    if warmup_s > 0:
        subprocess.run(_command(url, body, concurrency, warmup_s), check=True, capture_output=True)
    cmd = _command(url, body, concurrency, seconds)
    return parse(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def latencies(url: str, body: str, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """Every request's latency in seconds (2xx answers only), and the count of the others."""
    cmd = _command(url, body, concurrency, seconds)
    cmd[-1:-1] = ["-o", "csv"]  # one row per request: response-time,...,status-code,offset
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    ok, failed = [], 0
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) < 2:
            continue
        if fields[-2].startswith("2"):
            ok.append(float(fields[0]))
        else:
            failed += 1
    return ok, failed
