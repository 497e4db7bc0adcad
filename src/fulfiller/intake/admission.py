"""What a verified delivery asks of the store: a new job, a lifecycle update, or only a record.

Pure domain: no web or database here, so the receiver stays a thin adapter, the
rules can be tested on their own, and a store may apply them wherever it commits
(the SQLite backend does it in its ingest process, off the event loop).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fulfiller import events, jobs
from fulfiller.events import InvalidPayload, Lifecycle
from fulfiller.jobs import Job, Status

# The delivery lines, under the receiver's name wherever they are written from (see log_ingested).
log = logging.getLogger("fulfiller.receiver")
MAX_DEPTH = 64  # nesting levels a body may have (the object itself is the first)
MAX_RAW_KEY_BYTES = 512  # the longest wait token kept as it is in the jobs_callback_key index
_DIGEST_PREFIX = "sha256:"


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


def new_job(event_id: str, data: Mapping[str, Any], now: float, *, check_strings: bool = True) -> Job:
    """The job for a ``video.source_requested`` body received at ``now``: queued, or ``invalid`` with the reason.

    ``check_strings=False`` skips looking for a NUL or a lone surrogate in every string: JSON text can
    only carry one as a ``\\u`` escape, so a body without one has none.
    """
    callback_key = _wait_token_key(data)
    try:
        unsafe = events.unsafe_string(data) if check_strings else None
        if unsafe is not None:
            raise InvalidPayload(f"{unsafe or '(body)'}: holds a NUL or a lone surrogate")
        req = events.parse_source_request(data, received_at=now)
    except InvalidPayload as exc:
        # Keep whatever coordinates are readable, and safe to store and index, so operators can still
        # find the job.
        variation = _field(data, "creative", "variation")
        expires = None
        try:
            expires = events.parse_timestamp(_field(data, "fulfillment", "expiresAt"), "").timestamp()
        except InvalidPayload:
            pass
        return Job(
            id=jobs.new_job_id(), event_id=event_id, status=Status.INVALID, request_kind=None, payload=dict(data),
            storage_key=_safe_or_none(_field(data, "fulfillment", "storageKey")),
            project_id=_safe_or_none(data.get("projectId")), code=_safe_or_none(_field(data, "creative", "code")),
            variation=variation if _storable_int(variation) else None,
            locale=_safe_or_none(_field(data, "creative", "locale")), expires_at=expires,
            created_at=now, updated_at=now, error=f"invalid payload: {exc}", callback_key=callback_key,
        )
    return Job(
        id=jobs.new_job_id(), event_id=event_id, status=Status.QUEUED, request_kind=req.request_kind,
        payload=dict(data), storage_key=req.storage_key, project_id=req.coords.project_id, code=req.coords.code,
        variation=req.coords.variation, locale=req.coords.locale, expires_at=req.expires_at.timestamp(),
        created_at=now, updated_at=now, chosen_aspect=req.aspect, callback_key=callback_key,
    )


def _wait_token_key(data: Mapping[str, Any]) -> str | None:
    callback = _field(data, "fulfillment", "completeCallbackUrl")
    return wait_token_key(callback) if isinstance(callback, str) else None


def wait_token_key(callback_url: str) -> str:
    """The key that identifies a request whatever its (unsigned) event id: its completeCallbackUrl.

    A URL is its own key when short enough for any index row, so that keys ordered like the
    platform's tokens land side by side in the index; a longer one, or one that cannot be stored
    as UTF-8 (a lone surrogate), is keyed by its SHA-256, marked so that it cannot equal a URL.
    """
    try:
        encoded = callback_url.encode("utf-8")
    except UnicodeEncodeError:
        encoded = b""
    if encoded and len(encoded) <= MAX_RAW_KEY_BYTES and not callback_url.startswith(_DIGEST_PREFIX):
        return callback_url
    return _DIGEST_PREFIX + hashlib.sha256(callback_url.encode("utf-8", "surrogatepass")).hexdigest()


def _storable_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= events.MAX_INT


def _safe_or_none(value: Any) -> str | None:
    return value if events.safe_text(value) else None


def plan(event_id: str, topic: str, body: str, data: Mapping[str, Any], now: float) -> IncomingEvent:
    """Turn one verified, parsed delivery into the single write the store commits."""
    if topic == events.SOURCE_REQUESTED:
        job = new_job(event_id, data, now, check_strings="\\u" in body)
        return IncomingEvent(event_id, topic, body, now, job=job)
    if topic in events.LIFECYCLE_STATUS:
        # The topic header is not signed, the body is: a request's body under a lifecycle topic closes nothing.
        if _field(data, "fulfillment", "uploadUrl") is not None:
            return IncomingEvent(event_id, topic, body, now, note="not applied: the body is a request's"
                                 " (it carries fulfillment.uploadUrl), and the topic header is not signed")
        try:
            lifecycle = events.parse_lifecycle(topic, data)
        except InvalidPayload as exc:
            return IncomingEvent(event_id, topic, body, now, note=f"unmatched: {exc}")
        return IncomingEvent(event_id, topic, body, now, lifecycle=lifecycle)
    return IncomingEvent(event_id, topic, body, now, note="unknown topic: stored, nothing to do")


def answer(stored: bool) -> tuple[int, str]:
    """The HTTP status and outcome for a delivery the store took: new (202) or a duplicate id (200)."""
    return (202, "accepted") if stored else (200, "duplicate")


def log_ingested(event: IncomingEvent, stored: bool) -> None:
    """The lines for a delivery the store took, written by whatever committed it (``Store.ingest``):
    the receiver logs only the deliveries it refuses itself. A new job that is ``invalid`` gets its own
    warning here, as its outcome: no worker ever runs it."""
    status, outcome = answer(stored)
    log.info("delivery %s", outcome, extra={"event_id": event.event_id, "topic": event.topic or None,
                                             "outcome": outcome, "http_status": status})
    job = event.job
    if stored and job is not None and job.status == Status.INVALID:
        log.warning("job %s", job.status, extra={"event_id": job.event_id, "job_id": job.id, "status": job.status,
                                                 "code": job.code, "reason": job.error})


def plan_delivery(delivery: Delivery) -> IncomingEvent:
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

# What _depth needs of a JSON text: its strings (whose brackets are text), then every byte but a bracket.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def parse_object(body: bytes) -> tuple[str, dict[str, Any]]:
    """The body as text and as a JSON object; NotAnObject when it is not one, or is nested deeper than MAX_DEPTH.

    Strict where Python's json module is lenient, so that whatever is acked can
    be stored, read back and shown again: UTF-8 only (``json.loads`` on bytes would
    also guess UTF-16/32), no NaN/Infinity, no number that overflows to infinity,
    and no nesting that a later reader's recursion could not follow. The text is
    kept as received: a NUL or a lone surrogate in it is an ASCII escape, which
    any store holds (the job that reads one is ``invalid``: see new_job).
    """
    try:
        text = body.decode("utf-8")
        data = _decode(text)
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise NotAnObject("body is not a JSON object") from None
    if not isinstance(data, dict):
        raise NotAnObject("body is not a JSON object")
    # Fewer brackets than levels cannot nest too deep: the usual body is never scanned.
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and _depth(body) > MAX_DEPTH:
        raise NotAnObject(f"body is nested deeper than {MAX_DEPTH} levels")
    return text, data


def _depth(body: bytes) -> int:
    """How deep objects and arrays nest in a valid JSON text, the outermost being the first level.

    Read from the text, not the parsed value: a member that a later duplicate key replaces is gone from
    the value but not from the text, which is what is stored and read again.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
