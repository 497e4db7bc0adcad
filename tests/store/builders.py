"""Events and jobs for the store tests, built the way the receiver builds them (``intake.plan``)."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fulfiller.intake.admission import plan
from fulfiller.jobs import Job
from fulfiller.store import IncomingEvent, Store

PROJECT = "019d928c-02e1-7000-8000-000000000001"
REQUESTED = "video.source_requested"
FULFILLED = "video.source_fulfilled"
REJECTED = "video.source_rejected"
TIMEOUT = "video.source_timeout"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def callback_url(token: str | None = None) -> str:
    """A wait token's callback URL; a fresh token (the platform mints one per request) unless given."""
    return f"https://api.trigger.dev/api/v1/waitpoints/tokens/{token or 'waitpoint_' + uuid.uuid4().hex}/complete"


def request_body(code: str = "HRT-1", *, variation: int = 2, locale: str = "en", aspect: str | None = "9x16",
                 family: str | None = None, expires_in: float = 3600, key: str | None = None,
                 callback: str | None = None) -> dict[str, Any]:
    creative: dict[str, Any] = {"code": code, "variation": variation, "locale": locale, "kind": "video"}
    if aspect:
        creative["aspectRatio"] = aspect
    else:
        creative["placementFamily"] = family or "feed"
        creative["acceptedAspects"] = ["1x1", "3x4", "4x5"] if (family or "feed") == "feed" else ["9x16"]
    bucket = aspect or family or "feed"
    storage_key = key or f"fb-external/{PROJECT}/{code}/v{variation}/{locale}/{bucket}.video"
    return {
        "projectId": PROJECT,
        "projectSlug": "hearty",
        "creative": creative,
        "fulfillment": {
            "uploadUrl": f"https://acct.r2.cloudflarestorage.com/{storage_key}?X-Amz-Signature=abc",
            "storageKey": storage_key,
            "expiresAt": iso(time.time() + expires_in),
            "completeCallbackUrl": callback or callback_url(),
        },
    }


def event(event_id: str, topic: str, body: dict[str, Any], now: float | None = None) -> IncomingEvent:
    return plan(event_id, topic, json.dumps(body), body, time.time() if now is None else now)


def requested(event_id: str, now: float | None = None, **kwargs: Any) -> IncomingEvent:
    return event(event_id, REQUESTED, request_body(**kwargs), now)


def lifecycle_body(*, key: str | None = None, code: str = "HRT-1", variation: int = 2, locale: str = "en",
                   aspect: str | None = None, reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"projectId": PROJECT}
    if key:
        body["storageKey"] = key
    else:
        body["creative"] = {"code": code, "variation": variation, "locale": locale}
        if aspect:
            body["creative"]["aspectRatio"] = aspect
    if reason:
        body["reason"] = reason
    return body


async def ingest_job(store: Store, event_id: str, now: float | None = None, **kwargs: Any) -> Job:
    ev = requested(event_id, now, **kwargs)
    assert await store.ingest_event(ev) is True
    assert ev.job is not None
    return ev.job


async def status_of(store: Store, job_id: str) -> str:
    job = await store.get_job(job_id)
    assert job is not None
    return job.status
