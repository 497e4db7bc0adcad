"""What a verified delivery asks of the store: a new job, a lifecycle update, or only a record.

Pure domain: no web or database here, so the receiver stays a thin adapter and
the rules can be tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fulfiller import events, jobs
from fulfiller.events import InvalidPayload
from fulfiller.jobs import Job
from fulfiller.store.base import IncomingEvent


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
