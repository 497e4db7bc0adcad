"""Operator commands that read or change jobs straight from the store (``fulfiller jobs`` / ``rerun`` / ``skip``)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from fulfiller.config import Config
from fulfiller.jobs import Status
from fulfiller.store import open_store
from fulfiller.store.base import REFUSALS, Requeue

# What a table cell shows escaped: a sender's newlines and terminal escapes.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


async def list_jobs(config: Config, status: str | None, code: str | None, limit: int, as_json: bool,
                    out: Callable[[str], None]) -> int:
    if status is not None and status not in set(Status):
        out(f"unknown status {status!r}; one of: {', '.join(Status)}")
        return 2
    store = open_store(config.state)
    await store.open()
    try:
        found = await store.list_jobs(status, code, limit)
    finally:
        await store.close()
    if as_json:
        out(json.dumps({"jobs": [j.to_json() for j in found]}, indent=2))
        return 0
    if not found:
        out("no jobs")
        return 0
    rows = [("ID", "STATUS", "KIND", "CREATIVE", "ASPECT", "UPDATED", "REASON")]
    for j in found:
        d = j.to_json()  # renders any stored job, however odd
        creative = d["creative"] if isinstance(d["creative"], dict) else {}
        aspect = d["chosen_aspect"] or creative.get("aspectRatio") or creative.get("placementFamily") or "?"
        reason = d["skip_reason"] or d["error"] or d["lifecycle_reason"] or ""
        cells = (d["id"], d["status"], d["request_kind"] or "-", f"{j.code}/v{j.variation}/{j.locale}", aspect,
                 d["updated_at"] or "")
        rows.append((*(_cell(c) for c in cells), _cell(reason)[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _cell(value: Any) -> str:
    """A value as one table cell: a sender's control characters (newlines, terminal escapes) shown escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


# A completed job's wait token is answered: a second upload and callback most likely meet a 409.
COMPLETED_NEEDS_FORCE = ("the job is completed and the platform most likely answers 409 to a second delivery; "
                         "give --force to re-queue it anyway")


async def rerun(config: Config, job_id: str, out: Callable[[str], None], *, force: bool = False) -> int:
    """Exit 0 when re-queued, 1 for an unknown job, 2 when refused (a completed job only with ``force``)."""
    store = open_store(config.state)
    await store.open()
    try:
        if not force:
            job = await store.get_job(job_id)
            if job is not None and job.status == Status.COMPLETED:
                out(f"{job_id}: refused: {COMPLETED_NEEDS_FORCE}")
                return 2
        outcome = await store.requeue(job_id)
    finally:
        await store.close()
    return _answer(job_id, outcome, "re-queued", out)


async def skip(config: Config, job_id: str, reason: str, out: Callable[[str], None]) -> int:
    """Have a worker tell the platform to skip the job (as ``POST /admin/jobs/{id}/skip`` does).

    Exit 0 when the skip is queued, 1 for an unknown job, 2 when refused (a final job, an empty reason).
    """
    reason = reason.strip()
    if not reason:
        out("--reason must say why (the platform is told)")
        return 2
    store = open_store(config.state)
    await store.open()
    try:
        outcome = await store.requeue(job_id, skip_reason=reason)
    finally:
        await store.close()
    return _answer(job_id, outcome, f"skip requested; a worker tells the platform (reason: {_cell(reason)})", out)


def _answer(job_id: str, outcome: Requeue, done: str, out: Callable[[str], None]) -> int:
    if outcome == Requeue.QUEUED:
        out(f"{job_id}: {done}")
        return 0
    if outcome == Requeue.NOT_FOUND:
        out(f"{job_id}: {REFUSALS[Requeue.NOT_FOUND]}")
        return 1
    out(f"{job_id}: refused: {REFUSALS[outcome]}")
    return 2
