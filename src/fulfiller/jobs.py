"""Jobs: one per ``video.source_requested`` event, and the statuses they move through."""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from fulfiller.redact import redact_text, redact_url


class Status(StrEnum):
    """Where a job stands. Its value is what the store, the API and the logs say."""

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


FINAL = frozenset(Status) - {Status.QUEUED, Status.RUNNING}

_MAX_REASON = 1000
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone: a str holds no pairs
# Deeper than any body intake stores (64 levels) and far from the recursion limit of any encoder.
_SHOWN_DEPTH = 100


def new_job_id() -> str:
    """``job_`` and 32 hex digits: the time in milliseconds, then 80 random bits.

    Ids made later sort later, so each new job lands at the end of the id index: a
    random id (uuid4) would dirty a random page of it on every insert, and every dirty
    page is written whole at each commit. The ids are not secrets (the admin token
    guards what they name), so the random part need not come from the OS.
    """
    return f"job_{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


_FIRST = datetime(1, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds, as operators read timestamps.

    A stored time outside years 1-9999 (an old job's ``expiresAt``, a hand-edited row) shows as
    the nearest one inside, and a value that is not a number as its text: a listing never fails on one.
    """
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return None
    if not isinstance(ts, int | float):
        return str(ts)
    try:
        when = datetime.fromtimestamp(ts, UTC)
    except (OverflowError, ValueError, OSError):
        when = _LAST if ts > 0 else _FIRST
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def internal_error(exc: BaseException) -> str:
    """The reason a job ends ``failed`` on an exception nothing foresaw: its type and message, URLs
    redacted, short enough for a listing, and storable in any column (no NUL, no lone surrogate)."""
    text = redact_text(f"internal error: {type(exc).__name__}: {exc}")[:_MAX_REASON]
    return _SURROGATE.sub("\ufffd", text).replace("\x00", "\ufffd")


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
    # The event's body, decoded: an object, except in an odd stored job (see SqlStore's reads), where it
    # may be any JSON value, or None when the stored text does not decode.
    payload: Any
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
    callback_key: str | None = None  # the request's identity: intake.wait_token_key(completeCallbackUrl)
    crashes: int = 0  # runs that ended with their worker gone (crash, lease lost)
    retries: int = 0  # tries in a row that failed transiently: the backoff before the next one grows with it
    callback_body: str | None = None  # JSON of the callback to send, kept once the upload is done (or the skip chosen)
    callback_unanswered: bool = False  # a callback try may have reached the platform though its answer was lost
    measured: dict[str, Any] | None = None  # the master's picture: width, height, rotation, aspect (SPEC)
    attempts: list[Attempt] = field(default_factory=list)

    def waiting(self, now: float | None = None) -> bool:
        """Queued and not due yet: it waits between two tries."""
        return self.status == Status.QUEUED and self.not_before > (time.time() if now is None else now)

    def to_json(self, *, with_payload: bool = False) -> dict[str, Any]:
        """The job as SPEC shows it to operators; pre-signed URL signatures redacted.

        Any stored job renders, however odd (see ``_shown``): what a sender wrote is data to show.
        """
        body = self.payload if isinstance(self.payload, dict) else {}
        out: dict[str, Any] = {
            "id": self.id,
            "event_id": self.event_id,
            "status": self.status,
            "request_kind": self.request_kind,
            "creative": body.get("creative"),  # as received, whatever its type
            "project_id": self.project_id,
            "project_slug": body.get("projectSlug"),
            "storage_key": self.storage_key,
            "chosen_aspect": self.chosen_aspect,
            "extension": self.extension,
            "content_type": self.content_type,
            "content_hash": self.content_hash,
            "bytes": self.bytes,
            "source": self.source,
            "measured": self.measured,
            "skip_reason": self.skip_reason,
            "error": self.error,
            "lifecycle_reason": self.lifecycle_reason,
            "runs": self.runs,
            "crashes": self.crashes,
            "skip_requested": self.skip_requested,
            "next_try_at": iso(self.not_before) if self.waiting() else None,
            "expires_at": iso(self.expires_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "attempts": [a.to_json() for a in self.attempts],
        }
        if with_payload:
            out["event"] = redact_payload(self.payload)
        return _shown(out)


def redact_payload(payload: Any) -> Any:
    """A copy of an event body with the pre-signed URLs' credentials removed (anything but an object has none)."""
    if not isinstance(payload, dict):
        return payload
    copy = dict(payload)
    fulfillment = copy.get("fulfillment")
    if isinstance(fulfillment, dict):
        copy["fulfillment"] = fulfillment = dict(fulfillment)
        for key in ("uploadUrl", "completeCallbackUrl"):
            if isinstance(fulfillment.get(key), str):
                fulfillment[key] = redact_url(fulfillment[key])
    return copy


def _shown(value: Any) -> Any:
    """A copy of decoded JSON that every encoder takes and every terminal prints.

    A stored payload may predate intake's limits or be written by hand: a lone surrogate
    becomes U+FFFD (UTF-8 cannot encode it), NaN and infinities their names, nesting deeper
    than ``_SHOWN_DEPTH`` "…" (encoders recurse), anything not JSON (bytes) its text. The
    walk keeps its own stack, so no depth makes it recurse.
    """
    top: list[Any] = [None]
    todo: list[tuple[Any, Any, Any, int]] = [(top, 0, value, 0)]
    while todo:
        into, key, item, depth = todo.pop()
        if item is None or isinstance(item, bool | int):
            into[key] = item
        elif isinstance(item, float):
            into[key] = item if math.isfinite(item) else str(item)
        elif isinstance(item, dict | list | tuple) and depth >= _SHOWN_DEPTH:
            into[key] = "…"
        elif isinstance(item, dict):
            keys = [_text(k) for k in item]
            into[key] = copy = dict.fromkeys(keys)  # the keys in order; their values filled in as the walk goes
            todo.extend((copy, k, v, depth + 1) for k, v in zip(keys, item.values()))
        elif isinstance(item, list | tuple):
            into[key] = items = [None] * len(item)
            todo.extend((items, i, v, depth + 1) for i, v in enumerate(item))
        else:
            into[key] = _text(item)
    return top[0]


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)
