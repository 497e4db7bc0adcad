"""``GET /admin/refusals`` and the refused-deliveries metric, through the whole app.

Deliveries are refused the ways operators meet them (a secret copied without
its prefix, a proxy that re-serialised the JSON, a missing header, a body too
large); the sender is told only the public code, the operator gets the
doctor's, and nothing secret reaches the answer, the metric or the logs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fulfiller.app import create_app
from fulfiller.intake.refusal_log import CAPACITY, DIAGNOSES_PER_S, DIAGNOSIS_BURST
from fulfiller.ops.testevent import sample_event, signed_headers
from ops.test_admin import AUTH, SECRET, TOKEN, config_for

URL = "/webhooks/outpost"
TOPIC = "video.source_requested"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config_for(tmp_path))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fulfiller.test") as c:
            yield c


def event() -> bytes:
    body = sample_event("https://bucket.r2.cloudflarestorage.com/k.video?X-Amz-Signature=abc",
                        "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_1/complete")
    return json.dumps(body, separators=(",", ":")).encode()


async def refused(client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post(URL, content=body, headers=headers)


async def refusals(client: httpx.AsyncClient) -> list[dict[str, object]]:
    r = await client.get("/admin/refusals", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["capacity"] == CAPACITY
    return r.json()["refusals"]


async def test_each_refusal_is_listed_newest_first_with_the_doctors_code(client: httpx.AsyncClient) -> None:
    raw = event()
    unprefixed = signed_headers(raw, [SECRET.removeprefix("whsec_")], topic=TOPIC, event_id="evt_a")
    r = await refused(client, raw, unprefixed)
    # the sender learns the public code only
    assert (r.status_code, r.json()) == (401, {"error": "signature refused", "reason": "bad_signature"})
    reserialised = json.dumps(json.loads(raw), indent=2).encode()
    assert (await refused(client, reserialised, signed_headers(raw, [SECRET], topic=TOPIC, event_id="evt_b"))
            ).status_code == 401
    assert (await refused(client, raw, {"content-type": "application/json"})).json()["reason"] == \
        "no_signature_header"
    assert (await client.post(URL, content=raw, headers=signed_headers(raw, [SECRET], topic=TOPIC, event_id="ok"))
            ).status_code == 202

    listed = await refusals(client)
    assert [(e["answered"], e["reason"]) for e in listed] == [
        ("no_signature_header", "no_signature_header"), ("bad_signature", "body_modified"),
        ("bad_signature", "secret_variant")]
    newest, modified, variant = listed
    assert variant["client"] == "127.0.0.1" and variant["path"] == URL and variant["http_status"] == 401
    assert variant["body_bytes"] == len(raw) and modified["body_bytes"] == len(reserialised)
    assert "x-outpost-signature" in variant["headers"] and "x-outpost-signature" not in newest["headers"]
    assert any("receiver.secrets[0]" in line for line in variant["advice"])
    assert any("re-encoded" in line for line in modified["advice"])
    assert all(e["diagnosed"] for e in listed)


async def test_the_metric_counts_refusals_by_the_doctors_code(client: httpx.AsyncClient) -> None:
    raw = event()
    for n in range(2):
        await refused(client, raw, signed_headers(raw, [SECRET.removeprefix("whsec_")], topic=TOPIC,
                                                  event_id=f"evt_{n}"))
    await refused(client, b"x" * 2_000_000, {"content-type": "application/json"})
    text = (await client.get("/metrics")).text
    assert 'fulfiller_deliveries_refused_total{reason="secret_variant"} 2.0' in text
    assert 'fulfiller_deliveries_refused_total{reason="too_large"} 1.0' in text
    too_large = (await refusals(client))[0]
    assert (too_large["http_status"], too_large["reason"], too_large["diagnosed"]) == (413, "too_large", False)


async def test_nothing_secret_reaches_the_list_the_metric_or_the_logs(
        client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    raw = event().replace(b'"HRT-1212"', b'"BODY-MARKER-77"')
    headers = signed_headers(raw, [SECRET.removeprefix("whsec_")], topic=TOPIC, event_id="evt_secretive")
    await refused(client, raw, headers)
    shown = (await client.get("/admin/refusals", headers=AUTH)).text + (await client.get("/metrics")).text
    logged = repr([(r.getMessage(), r.__dict__) for r in caplog.records])
    for value in (SECRET, SECRET.removeprefix("whsec_"), headers["x-outpost-signature"], "BODY-MARKER-77", TOKEN):
        assert value not in shown and value not in logged
    line = next(r for r in caplog.records if r.getMessage() == "delivery refused: bad_signature")
    assert (line.reason, line.code, line.client) == ("bad_signature", "secret_variant", "127.0.0.1")


async def test_a_flood_is_kept_within_the_ring_and_diagnosed_within_the_budget(client: httpx.AsyncClient) -> None:
    raw = event()
    headers = signed_headers(raw, ["whsec_someone-elses"], topic=TOPIC, event_id="evt_flood")
    started = time.monotonic()
    for _ in range(CAPACITY + 20):
        assert (await refused(client, raw, headers)).status_code == 401
    elapsed = time.monotonic() - started
    listed = await refusals(client)
    assert len(listed) == CAPACITY
    diagnosed = [e for e in listed if e["diagnosed"]]
    assert len(diagnosed) <= DIAGNOSIS_BURST + int(elapsed * DIAGNOSES_PER_S) + 1
    assert {e["reason"] for e in diagnosed} <= {"wrong_secret"}
    assert {e["reason"] for e in listed if not e["diagnosed"]} == {"bad_signature"}
