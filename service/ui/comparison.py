"""`/ui/comparison.json`: the `models.compare` report the page's Compare view draws.

The file is the operator's (`comparison_report`), written atomically by `models.compare`;
it is read off the event loop and kept while its size and modification time stay the same,
so a rerun of the comparison shows on the next load without a restart.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter

from models.compare_report import REPORT_FORMAT

from ..deps import SettingsDep
from ..errors import ApiError

router = APIRouter(include_in_schema=False)
log = logging.getLogger("gatehouse.ui")

HOW_TO = (
    "run `python -m models.compare --data DIR --budget-s N --report docs/comparison.md`, "
    "then start the server with --comparison-report docs/comparison/report.json"
)
_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}


class ReportError(ValueError):
    """The configured file is missing, unreadable or not a comparison report."""


def read_report(path: Path) -> dict[str, Any]:
    """The parsed report at `path`, from the cache while the file is unchanged."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        cached = _cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ReportError(f"{type(e).__name__}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ReportError(f"not a models.compare report of format {REPORT_FORMAT}")
    if not isinstance(data.get("kinds"), list):
        raise ReportError("the report lists no kinds")
    _cache[path] = (stamp, data)
    return data


@router.get("/ui/comparison.json")
async def comparison(settings: SettingsDep) -> dict[str, Any]:
    path = settings.comparison_report
    if path is None:
        raise ApiError(404, f"no comparison report is configured: {HOW_TO}")
    try:
        return await anyio.to_thread.run_sync(read_report, path)
    except ReportError as e:
        # The path and the reason go to the log only: the page is open to every visitor.
        log.warning("comparison report %s: %s", path, e)
        raise ApiError(404, f"the configured comparison report cannot be read: {HOW_TO}") from None
