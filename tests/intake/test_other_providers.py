"""Senders that sign as the providers SPEC names (Dessert, Adsumo, Desmo), through a real receiver.

Each test configures the receiver's signing settings as the provider's own page
describes its signature, and delivers over HTTP to the app under uvicorn: the
event is stored (deduplicated on the provider's id header, or on the body's
hash when it sends none) and, with no Outpost topic, creates no job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfiller.app import create_app
from fulfiller.config import load_config
from fulfiller.ops.testevent import sample_event
from support.servers import admin_jobs, serve_in_thread, write_config


@dataclass
class Receiver:
    url: str
    db: Path
    client: httpx.Client

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.client.post(f"{self.url}/webhooks/outpost", content=body,
                                headers={"content-type": "application/json", **headers})

    def events(self) -> dict[str, str]:
        """Stored event ids and their topics."""
        with sqlite3.connect(self.db) as conn:
            return dict(conn.execute("SELECT event_id, topic FROM events"))

    def jobs(self) -> list[dict[str, Any]]:
        return admin_jobs(self.client, self.url)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    with ExitStack() as stack:

        def start(secret: str, **settings: Any) -> Receiver:
            db = tmp_path / "state.db"
            path = write_config(tmp_path, f"sqlite:///{db}", secret=secret, receiver=settings)
            url = stack.enter_context(serve_in_thread(create_app(load_config(path, env={}))))
            return Receiver(url, db, stack.enter_context(httpx.Client(timeout=10)))

        yield start


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def body_id(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


# No event-id, topic or timestamp header: one lowercase hex HMAC-SHA256 of the raw body, no prefix.
NO_OTHER_HEADERS = {"event_id_header": "", "topic_header": "", "timestamp_header": "",
                    "signature_header_template": '{{.Signatures | join ","}}'}


def test_dessert_delivery_is_stored_once_without_a_job(receiver: Callable[..., Receiver]) -> None:
    secret = "dessert-webhook-secret-81f2"
    r = receiver(secret, signature_header="X-Dessert-Signature", **NO_OTHER_HEADERS)
    body = json.dumps({"event": "delivery.completed", "delivery_id": "dlv_01", "request_id": "req_9",
                       "status": "completed", "ad_count": 1,
                       "ads": [{"ad_id": "ad_1", "orientation": "portrait", "headline": "Hi",
                                "static_url": "https://cdn.example/a.png", "video_url": "https://cdn.example/a.mp4"}],
                       "viewer_url": "https://dessert.example/v/dlv_01",
                       "delivered_at": "2026-04-24T00:00:00Z"}).encode()
    signed = {"X-Dessert-Signature": hex_hmac(secret, body)}
    accepted = r.post(body, signed)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json() == {"status": "accepted", "event_id": body_id(body)}
    assert r.post(body, signed).status_code == 200  # a retry of the same bytes is the same event
    assert r.events() == {body_id(body): ""}
    assert r.jobs() == []
    refused = r.post(body, {"X-Dessert-Signature": hex_hmac("not-the-secret", body)})
    assert refused.status_code == 401
    assert refused.json() == {"error": "signature refused", "reason": "bad_signature"}


def test_adsumo_delivery_is_stored_without_a_job(receiver: Callable[..., Receiver]) -> None:
    secret = "adsumo_sk_4c1d"
    r = receiver(secret, signature_header="X-Adsumo-Signature", **NO_OTHER_HEADERS)
    body = json.dumps({"event": "generation.completed", "generation_id": "gen_7", "type": "video",
                       "status": "completed", "result_url": "https://adsumo.example/r/gen_7",
                       "created_at": "2026-04-24T00:00:00Z", "completed_at": "2026-04-24T00:01:00Z"}).encode()
    response = r.post(body, {"X-Adsumo-Signature": hex_hmac(secret, body)})
    assert response.status_code == 202, response.text
    assert r.events() == {body_id(body): ""}
    assert r.jobs() == []


def test_desmo_delivery_is_stored_under_its_delivery_id_and_event_without_a_job(
        receiver: Callable[..., Receiver]) -> None:
    secret = "whsec_desmo-5f0e"
    r = receiver(secret, signature_header="X-Desmo-Signature",
                 signature_header_template="sha256={{index .Signatures 0}}", event_id_header="X-Desmo-Delivery",
                 topic_header="X-Desmo-Event", timestamp_header="")
    body = json.dumps({"event": "session.started", "timestamp": "2026-04-24T00:00:00Z",
                       "data": {"session_id": "s_1"}}).encode()
    headers = {"X-Desmo-Signature": f"sha256={hex_hmac(secret, body)}", "X-Desmo-Delivery": "dlv_4f2a",
               "X-Desmo-Event": "session.started"}
    response = r.post(body, headers)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "event_id": "dlv_4f2a"}
    assert r.post(body, headers).status_code == 200  # redelivered: deduplicated on X-Desmo-Delivery
    assert r.events() == {"dlv_4f2a": "session.started"}
    assert r.jobs() == []
    unprefixed = r.post(body, {**headers, "X-Desmo-Signature": hex_hmac(secret, body)})
    assert unprefixed.json()["reason"] == "malformed_signature"


def test_without_a_topic_header_a_request_body_still_makes_its_job(receiver: Callable[..., Receiver]) -> None:
    """The topic header is not sent, but the signed body is a video.source_requested request by its shape."""
    secret = "outpost-without-topic"
    r = receiver(secret, topic_header="")
    body = json.dumps(sample_event("https://acct.r2.cloudflarestorage.com/b/k?X-Amz-Signature=a",
                                   "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_t1/complete")).encode()
    response = r.post(body, {"x-outpost-signature": f"v0={hex_hmac(secret, body)}", "x-outpost-event-id": "evt_nt",
                             "x-outpost-topic": "video.source_fulfilled"})  # not the configured header: ignored
    assert response.status_code == 202, response.text
    assert r.events() == {"evt_nt": "video.source_requested"}
    [job] = r.jobs()
    assert job["event_id"] == "evt_nt" and job["status"] == "queued"
