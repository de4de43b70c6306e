"""A job as clients see it (GET /jobs/{id}, SSE): the stored record, live progress on top."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from .db import JobRow


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def job_view(row: JobRow, live: JobRow | None = None) -> dict[str, Any]:
    """`live`: the running worker's fresher copy (progress reaches SQLite at most once a
    second); its progress fields are shown while the stored record says running."""
    cur = live if live is not None and row.status == "running" else row
    return {
        "job_id": row.id,
        "status": row.status,
        "name": row.name,
        "arch": row.arch,
        "progress": min(max(cur.progress, 0.0), 1.0),
        "metrics": cur.metrics,
        "history": cur.history,
        "model": (
            {"name": row.name, "version": row.model_version}
            if row.status == "succeeded" and row.model_version is not None
            else None
        ),
        "error": row.error,
        "created_at": iso(row.created_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "request": row.request,
        "config": cur.config,
        "corpus": cur.corpus,
        "attempts": row.attempts,
        "interruptions": row.interruptions,
        "note": row.note,
        "resumed_from_step": cur.resumed_step,
    }
