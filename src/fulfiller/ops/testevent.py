"""``fulfiller send-test-event``: sign an event exactly as Outpost does and POST it.

Lets an operator prove a deployment end to end (secret, header prefix, mode)
without waiting for the platform.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fulfiller.intake.signing import sign_outpost, sign_standard


def sample_event(upload_url: str, callback_url: str, *, code: str = "HRT-1212", aspect: str = "9x16",
                 expires_in_s: int = 3600) -> dict[str, Any]:
    """An OSS ``video.source_requested`` body shaped as the platform documents it."""
    expires = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).replace(microsecond=0)
    return {
        "projectId": "019d928c-02e1-7000-8000-000000000001",
        "projectSlug": "hearty",
        "creative": {"code": code, "variation": 2, "locale": "en", "aspectRatio": aspect, "kind": "video"},
        "facebook": {"facebookMediaIds": ["fm_a"], "ads": [], "adsets": [], "campaigns": []},
        "fulfillment": {
            "uploadUrl": upload_url,
            "storageKey": f"fb-external/019d928c/{code}/v2/en/{aspect}.video",
            "expiresAt": expires.isoformat().replace("+00:00", "Z"),
            "completeCallbackUrl": callback_url,
        },
    }


def signed_headers(body: bytes, secrets: list[str], *, topic: str, event_id: str, mode: str = "outpost",
                   prefix: str | None = None, timestamped: bool = False) -> dict[str, str]:
    """The headers Outpost would send with ``body``."""
    now = int(time.time())
    if mode == "standard":
        p = prefix or "webhook-"
        headers = sign_standard(body, secrets, msg_id=event_id, timestamp=now, prefix=p)
        headers[f"{p}topic"] = topic
    else:
        p = prefix or "x-outpost-"
        headers = {
            f"{p}event-id": event_id,
            f"{p}topic": topic,
            f"{p}timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
            f"{p}signature": sign_outpost(body, secrets, timestamp=now if timestamped else None),
        }
    headers["content-type"] = "application/json"
    return headers


def send_test_event(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    if args.file:
        body = Path(args.file).read_bytes()
    else:
        body = json.dumps(sample_event(args.upload_url, args.callback_url)).encode()
    event_id = args.event_id or f"evt_test_{uuid.uuid4().hex[:16]}"
    headers = signed_headers(body, args.secret, topic=args.topic, event_id=event_id, mode=args.mode,
                             prefix=args.header_prefix, timestamped=args.timestamped)
    try:
        response = httpx.post(args.url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        out(f"could not deliver to {args.url}: {exc}")
        return 1
    out(f"{response.status_code} {response.text.strip()}  (event {event_id}, topic {args.topic})")
    return 0 if response.is_success else 1
