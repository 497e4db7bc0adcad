"""Jobs: one per ``video.source_requested`` event, and the statuses they move through."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fulfiller.redact import redact_url

QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
SKIPPED = "skipped"
SUPERSEDED = "superseded"
EXPIRED = "expired"
FAILED = "failed"
INVALID = "invalid"
FULFILLED = "fulfilled"
REJECTED = "rejected"
TIMED_OUT = "timed_out"

STATUSES = (
    QUEUED, RUNNING, COMPLETED, SKIPPED, SUPERSEDED, EXPIRED, FAILED, INVALID, FULFILLED, REJECTED, TIMED_OUT,
)
FINAL = frozenset(STATUSES) - {QUEUED, RUNNING}


def new_job_id() -> str:
    """``job_`` and 32 hex digits: the time in milliseconds, then 80 random bits.

    Ids made later sort later, so each new job lands at the end of the id index: a
    random id (uuid4) dirtied a random page of it on every insert, and every dirty
    page is written whole at each commit. The ids are not secrets (the admin token
    guards what they name), so the random part need not come from the OS.
    """
    return f"job_{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds, as operators read timestamps."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Attempt:
    """One step tried for a job: resolve, upload, callback."""

    step: str
    started_at: float
    duration_ms: float
    http_status: int | None = None
    error: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_at"] = iso(self.started_at)
        return out


@dataclass
class Job:
    """A job as stored. Timestamps are epoch seconds; ``to_json`` renders them for people."""

    id: str
    event_id: str
    status: str
    request_kind: str | None
    payload: dict[str, Any]
    storage_key: str | None
    project_id: str | None
    code: str | None
    variation: int | None
    locale: str | None
    expires_at: float | None
    created_at: float
    updated_at: float
    chosen_aspect: str | None = None
    extension: str | None = None
    content_type: str | None = None
    content_hash: str | None = None
    bytes: int | None = None
    skip_reason: str | None = None
    error: str | None = None
    lifecycle_reason: str | None = None
    source: str | None = None  # where the master came from, e.g. "local:HRT-1/v2/en/9x16.mp4"
    runs: int = 0
    lease_owner: str | None = None
    lease_until: float | None = None
    not_before: float = 0.0
    skip_requested: str | None = None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def creative(self) -> dict[str, Any]:
        creative = self.payload.get("creative")
        return creative if isinstance(creative, dict) else {}

    def to_json(self, *, with_payload: bool = False) -> dict[str, Any]:
        """The job as SPEC shows it to operators; pre-signed URL signatures redacted."""
        out: dict[str, Any] = {
            "id": self.id,
            "event_id": self.event_id,
            "status": self.status,
            "request_kind": self.request_kind,
            "creative": self.creative,
            "project_id": self.project_id,
            "project_slug": self.payload.get("projectSlug"),
            "storage_key": self.storage_key,
            "chosen_aspect": self.chosen_aspect,
            "extension": self.extension,
            "content_type": self.content_type,
            "content_hash": self.content_hash,
            "bytes": self.bytes,
            "source": self.source,
            "skip_reason": self.skip_reason,
            "error": self.error,
            "lifecycle_reason": self.lifecycle_reason,
            "runs": self.runs,
            "expires_at": iso(self.expires_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "attempts": [a.to_json() for a in self.attempts],
        }
        if with_payload:
            out["event"] = redact_payload(self.payload)
        return out


def redact_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of an event body with the pre-signed URLs' credentials removed."""
    copy = json.loads(json.dumps(payload))
    fulfillment = copy.get("fulfillment")
    if isinstance(fulfillment, dict):
        for key in ("uploadUrl", "completeCallbackUrl"):
            if isinstance(fulfillment.get(key), str):
                fulfillment[key] = redact_url(fulfillment[key])
    return copy
