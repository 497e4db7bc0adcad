"""What a verified delivery asks of the store: a new job, a lifecycle update, or only a record.

Pure domain: no web or database here, so the receiver stays a thin adapter, the
rules can be tested on their own, and a store may apply them wherever it commits
(the SQLite backend does it in its ingest process, off the event loop).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fulfiller import events, jobs
from fulfiller.events import InvalidPayload, Lifecycle
from fulfiller.jobs import Job

# The delivery lines, under the receiver's name wherever they are written from (see log_taken).
log = logging.getLogger("fulfiller.receiver")


@dataclass(frozen=True)
class Delivery:
    """A delivery whose signature checked out: what the receiver hands the store."""

    event_id: str
    topic: str
    body: bytes
    received_at: float


@dataclass(frozen=True)
class IncomingEvent:
    """A verified delivery, with what it asks of the store."""

    event_id: str
    topic: str
    body: str  # the JSON text as received: the store keeps it once, as the job's payload if there is a job
    received_at: float
    job: Job | None = None  # the job a video.source_requested creates (its payload is ``body`` parsed)
    lifecycle: Lifecycle | None = None  # the job status a follow-up event sets
    note: str | None = None  # why nothing else happens (unknown topic, unreadable lifecycle)


class NotAnObject(ValueError):
    """The body is not a JSON object (the receiver answers 400: redelivering it cannot help)."""


def _field(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def new_job(event_id: str, data: Mapping[str, Any], now: float) -> Job:
    """The job for a ``video.source_requested`` body: queued, or ``invalid`` with the reason."""
    try:
        req = events.parse_source_request(data)
    except InvalidPayload as exc:
        # Keep whatever coordinates are readable so operators can still find the job.
        variation = _field(data, "creative", "variation")
        expires = None
        try:
            expires = events.parse_timestamp(_field(data, "fulfillment", "expiresAt"), "").timestamp()
        except InvalidPayload:
            pass
        return Job(
            id=jobs.new_job_id(), event_id=event_id, status=jobs.INVALID, request_kind=None, payload=dict(data),
            storage_key=_str_or_none(_field(data, "fulfillment", "storageKey")),
            project_id=_str_or_none(data.get("projectId")), code=_str_or_none(_field(data, "creative", "code")),
            variation=variation if _storable_int(variation) else None,
            locale=_str_or_none(_field(data, "creative", "locale")), expires_at=expires,
            created_at=now, updated_at=now, error=f"invalid payload: {exc}",
        )
    return Job(
        id=jobs.new_job_id(), event_id=event_id, status=jobs.QUEUED, request_kind=req.request_kind,
        payload=dict(data), storage_key=req.storage_key, project_id=req.coords.project_id, code=req.coords.code,
        variation=req.coords.variation, locale=req.coords.locale, expires_at=req.expires_at.timestamp(),
        created_at=now, updated_at=now, chosen_aspect=req.aspect,
    )


def _storable_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= events.MAX_INT


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def plan(event_id: str, topic: str, body: str, data: Mapping[str, Any], now: float) -> IncomingEvent:
    """Turn one verified, parsed delivery into the single write the store commits."""
    if topic == events.SOURCE_REQUESTED:
        return IncomingEvent(event_id, topic, body, now, job=new_job(event_id, data, now))
    if topic in events.LIFECYCLE_STATUS:
        try:
            lifecycle = events.parse_lifecycle(topic, data)
        except InvalidPayload as exc:
            return IncomingEvent(event_id, topic, body, now, note=f"unmatched: {exc}")
        return IncomingEvent(event_id, topic, body, now, lifecycle=lifecycle)
    return IncomingEvent(event_id, topic, body, now, note="unknown topic: stored, nothing to do")


def answer(stored: bool) -> tuple[int, str]:
    """The HTTP status and outcome for a delivery the store took: new (202) or a duplicate id (200)."""
    return (202, "accepted") if stored else (200, "duplicate")


def log_taken(event_id: str, topic: str, stored: bool) -> None:
    """The line for a delivery the store took, written by whatever committed it (``Store.accept``):
    the receiver logs only the deliveries it refuses itself."""
    status, outcome = answer(stored)
    log.info("delivery %s", outcome, extra={"event_id": event_id, "topic": topic or None, "outcome": outcome,
                                             "http_status": status})


def admit(delivery: Delivery) -> IncomingEvent:
    """Parse and plan one verified delivery; NotAnObject when its body is not a JSON object."""
    text, data = parse_object(delivery.body)
    return plan(delivery.event_id, delivery.topic, text, data, delivery.received_at)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which no JSON writer can write back
        raise ValueError("number out of range")
    return value


# Built once: json.loads with hooks would build a decoder per call.
_decode = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float).decode


def parse_object(body: bytes) -> tuple[str, dict[str, Any]]:
    """The body as text and as a JSON object; NotAnObject when it is not one.

    Strict where Python's json module is lenient, so that whatever is acked can
    be stored and shown again: UTF-8 only (``json.loads`` on bytes would also
    guess UTF-16/32), no NaN/Infinity, no number that overflows to infinity, no
    lone surrogate from a ``\\udXXX`` escape (it cannot be encoded as UTF-8),
    and nesting deep enough to exhaust the recursion limit is refused, not a 500.
    """
    try:
        text = body.decode("utf-8")
        data = _decode(text)
        if isinstance(data, dict) and "\\u" in text:
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise NotAnObject("body is not a JSON object") from None
    if not isinstance(data, dict):
        raise NotAnObject("body is not a JSON object")
    return text, data
