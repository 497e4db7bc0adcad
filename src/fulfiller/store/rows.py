"""A job as the jobs table holds it: its columns, and the row read back as a ``Job``."""

from __future__ import annotations

import json
from typing import Any

from fulfiller.jobs import Job

# Columns of the jobs table, in Job's field order (attempts live in their own table).
JOB_COLUMNS = (
    "id", "event_id", "status", "request_kind", "payload", "storage_key", "project_id", "code",
    "variation", "locale", "expires_at", "created_at", "updated_at", "chosen_aspect", "extension",
    "content_type", "content_hash", "bytes", "skip_reason", "error", "lifecycle_reason", "source",
    "runs", "lease_owner", "lease_until", "not_before", "skip_requested", "callback_key", "crashes", "retries",
    "callback_body", "callback_unanswered", "measured",
)
# What a worker may record on a job it holds.
UPDATABLE = frozenset(JOB_COLUMNS) - {"id", "event_id", "status", "payload", "created_at", "lease_owner"}
SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"


def job_from_row(row: tuple[Any, ...], *, for_display: bool = False) -> Job:
    """The Job a row holds. Its payload decodes, or this raises; ``for_display``: a payload that does not
    (a job stored before intake bounded nesting, a row written by hand) is None instead."""
    values = dict(zip(JOB_COLUMNS, row))
    try:
        values["payload"] = json.loads(values["payload"])
    except (ValueError, TypeError, RecursionError):
        if not for_display:
            raise
        values["payload"] = None
    values["callback_unanswered"] = bool(values["callback_unanswered"])  # SQLite keeps a BOOLEAN as 0 or 1
    values["measured"] = _measured(values["measured"])
    return Job(**values)


def _measured(text: str | None) -> dict[str, Any] | None:
    """The measured picture as the worker recorded it (JSON), None when none was or it does not decode."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
