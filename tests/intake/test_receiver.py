"""The webhook endpoint over real HTTP: every status code SPEC gives it, event ids, modes, lifecycle.

Each test runs the whole app (``create_app``) under uvicorn on 127.0.0.1 with
its own SQLite file, and checks what was stored by reading that file and the
admin API, so "202" is always checked against what the store actually holds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfiller.app import create_app
from fulfiller.config import load_config
from fulfiller.intake.admission import wait_token_key
from fulfiller.intake.signing import sign_outpost
from fulfiller.ops.testevent import sample_event, signed_headers
from support.servers import TEST_ADMIN_TOKEN, TEST_SECRET, admin_jobs, serve_in_thread, write_config

REQUESTED = "video.source_requested"
UPLOAD = "https://acct.r2.cloudflarestorage.com/bucket/key?X-Amz-Signature=abc"
CALLBACK = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete"
PROJECT = "019d928c-02e1-7000-8000-000000000001"


@dataclass
class Server:
    url: str
    db: Path
    client: httpx.Client
    secrets: list[str]
    mode: str = "outpost"
    prefix: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.url}/webhooks/outpost"

    def deliver(self, data: Any, topic: str = REQUESTED, event_id: str | None = None,
                **kwargs: Any) -> httpx.Response:
        """POST ``data`` (JSON-encoded unless bytes) signed as Outpost would sign it."""
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        headers = signed_headers(body, self.secrets, topic=topic, event_id=event_id or new_id(),
                                 mode=self.mode, prefix=self.prefix, **kwargs)
        return self.client.post(self.endpoint, content=body, headers=headers)

    def events(self) -> dict[str, dict[str, Any]]:
        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            return {r["event_id"]: dict(r) for r in conn.execute("SELECT * FROM events")}

    def payload_of(self, event_id: str) -> str:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT payload FROM jobs WHERE event_id = ?", (event_id,)).fetchone()[0]

    def jobs(self) -> list[dict[str, Any]]:
        return admin_jobs(self.client, self.url)

    def job_of(self, event_id: str) -> dict[str, Any] | None:
        found = [j for j in self.jobs() if j["event_id"] == event_id]
        assert len(found) <= 1
        return found[0] if found else None


def new_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start the app for a receiver config (overrides of the defaults); stopped after the test."""
    stack = ExitStack()
    count = 0

    def make(secrets: list[str] | None = None, **receiver: Any) -> Server:
        nonlocal count
        count += 1
        directory = tmp_path / f"server{count}"
        directory.mkdir()
        secrets = secrets or [TEST_SECRET]
        db = directory / "state.db"
        path = write_config(directory, f"sqlite:///{db}", secret=secrets[0], receiver={"secrets": secrets, **receiver})
        url = stack.enter_context(serve_in_thread(create_app(load_config(path, env={}))))
        client = stack.enter_context(httpx.Client(timeout=10))
        return Server(url, db, client, secrets, receiver.get("mode", "outpost"), receiver.get("header_prefix"))

    with stack:
        yield make


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


def callback() -> str:
    """A fresh wait token's callback URL: the platform mints one per request, and a request that repeats
    one is a duplicate."""
    return CALLBACK.replace("waitpoint_abc", f"waitpoint_{uuid.uuid4().hex}")


def oss(code: str = "HRT-1212", aspect: str = "9x16", variation: int = 2, **fulfillment: Any) -> dict[str, Any]:
    event = sample_event(UPLOAD, callback(), code=code, aspect=aspect)
    event["creative"]["variation"] = variation
    event["fulfillment"]["storageKey"] = f"fb-external/{PROJECT}/{code}/v{variation}/en/{aspect}.video"
    event["fulfillment"].update(fulfillment)
    return event


def afs(code: str, family: str = "feed", accepted: tuple[str, ...] = ("1x1", "3x4", "4x5")) -> dict[str, Any]:
    event = oss(code)
    del event["creative"]["aspectRatio"]
    event["creative"].update(placementFamily=family, acceptedAspects=list(accepted))
    event["fulfillment"]["storageKey"] = f"fb-external/{PROJECT}/{code}/v2/en/{family}.video"
    return event


def unique_code() -> str:
    return f"HRT-{uuid.uuid4().hex[:8].upper()}"


# --- 202 / 200 / stored -------------------------------------------------------------------------


def test_new_event_is_stored_with_its_job_then_acked_202(server: Server) -> None:
    event = oss()
    body = json.dumps(event, separators=(",", ":")).encode()
    response = server.deliver(body, event_id="evt_first")
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "event_id": "evt_first"}
    assert response.headers["content-type"] == "application/json"  # as Starlette's JSONResponse said it
    assert response.content == b'{"status":"accepted","event_id":"evt_first"}'
    stored = server.events()["evt_first"]
    assert stored["topic"] == REQUESTED
    assert stored["body"] == ""  # kept once, as its job's payload:
    assert server.payload_of("evt_first") == body.decode()  # the raw body, byte for byte
    job = server.job_of("evt_first")
    assert job is not None
    assert job["status"] == "queued"
    assert job["request_kind"] == "oss"
    assert job["creative"] == event["creative"]
    assert job["storage_key"] == event["fulfillment"]["storageKey"]
    assert job["chosen_aspect"] == "9x16"


def test_duplicate_event_id_is_200_and_stores_nothing_new(server: Server) -> None:
    first = server.deliver(oss(), event_id="evt_dup")
    assert first.status_code == 202
    again = server.deliver(oss(), event_id="evt_dup")
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": "evt_dup"}
    # A redelivery with a different body is still the same event (the id is the dedupe key).
    other = server.deliver(oss(code="HRT-9999"), event_id="evt_dup")
    assert other.status_code == 200
    assert list(server.events()) == ["evt_dup"]
    assert len(server.jobs()) == 1
    assert server.jobs()[0]["creative"]["code"] == "HRT-1212"


def test_event_id_falls_back_to_sha256_of_body(server: Server) -> None:
    body = json.dumps(oss()).encode()
    headers = signed_headers(body, server.secrets, topic=REQUESTED, event_id="x")
    del headers["x-outpost-event-id"]
    expected = "sha256:" + hashlib.sha256(body).hexdigest()
    response = server.client.post(server.endpoint, content=body, headers=headers)
    assert response.status_code == 202
    assert response.json()["event_id"] == expected
    assert expected in server.events()
    # The same bytes again are the same event; an empty id header counts as absent.
    headers["x-outpost-event-id"] = ""
    assert server.client.post(server.endpoint, content=body, headers=headers).status_code == 200
    assert len(server.events()) == 1


# --- 401 ------------------------------------------------------------------------------------------


def _refused(server: Server, body: bytes, headers: dict[str, str], reason: str) -> None:
    response = server.client.post(server.endpoint, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json() == {"error": "signature refused", "reason": reason}


# The public reason code of each refusal: what to fix, never which secret or template it was checked against.
REFUSED = {"missing": "no_signature_header", "empty": "no_signature_header", "wrong-secret": "bad_signature",
           "garbled": "malformed_signature", "other-body": "bad_signature",
           "stale-timestamp": "timestamp_outside_tolerance", "future-timestamp": "timestamp_outside_tolerance",
           "previous-secret-not-held": "bad_signature"}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_signature_is_401_with_its_reason_and_nothing_is_stored(server: Server, case: str) -> None:
    body = json.dumps(oss()).encode()
    headers = signed_headers(body, server.secrets, topic=REQUESTED, event_id="evt_bad")
    sig = "x-outpost-signature"
    now = int(time.time())
    if case == "missing":
        del headers[sig]
    elif case == "empty":
        headers[sig] = ""
    elif case == "wrong-secret":
        headers[sig] = sign_outpost(body, ["whsec_not-ours"])
    elif case == "garbled":
        headers[sig] = "v0=" + "zz" * 32
    elif case == "other-body":
        headers[sig] = sign_outpost(body + b" ", server.secrets)
    elif case == "stale-timestamp":
        headers[sig] = sign_outpost(body, server.secrets, timestamp=now - 301 - 5)
    elif case == "future-timestamp":
        headers[sig] = sign_outpost(body, server.secrets, timestamp=now + 301 + 5)
    elif case == "previous-secret-not-held":
        headers[sig] = sign_outpost(body, ["whsec_old-one"])
    _refused(server, body, headers, REFUSED[case])
    assert server.events() == {}
    assert server.jobs() == []


def test_every_refused_delivery_is_logged_with_its_reason_and_client_and_nothing_secret(
        make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture) -> None:
    server = make_server(max_body_bytes=4096)
    caplog.set_level(logging.INFO, logger="fulfiller.receiver")
    event = oss()
    body = json.dumps(event).encode()
    forged = sign_outpost(body, ["whsec_not-ours"])
    headers = signed_headers(body, server.secrets, topic=REQUESTED, event_id="evt_forged")
    refusals = [
        (body, {**headers, "x-outpost-signature": forged}, 401),
        (body, {k: v for k, v in headers.items() if k != "x-outpost-signature"}, 401),
        (b"x" * 5000, headers, 413),
    ]
    for content, sent, status in refusals:
        assert server.client.post(server.endpoint, content=content, headers=sent).status_code == status
    assert server.deliver(b"[1, 2]", event_id="evt_list").status_code == 400
    assert server.deliver(oss(), event_id="evt_fine").status_code == 202

    lines = [r for r in caplog.records if r.name == "fulfiller.receiver" and r.getMessage().startswith("delivery")]
    assert [(r.levelname, r.getMessage(), r.reason, r.http_status, r.event_id, r.client) for r in lines] == [
        ("WARNING", "delivery refused: bad_signature", "bad_signature", 401, None, "127.0.0.1"),
        ("WARNING", "delivery refused: no_signature_header", "no_signature_header", 401, None, "127.0.0.1"),
        ("WARNING", "delivery refused: too_large", "too_large", 413, None, "127.0.0.1"),
        ("WARNING", "delivery refused: not_a_json_object", "not_a_json_object", 400, "evt_list", "127.0.0.1"),
    ]  # the accepted delivery is logged where it was committed: the store's ingest process
    shown = repr([(r.getMessage(), r.__dict__) for r in caplog.records])
    for secret in (forged.removeprefix("v0="), server.secrets[0], event["fulfillment"]["completeCallbackUrl"]):
        assert secret not in shown


def test_timestamped_signature_within_tolerance_is_accepted(server: Server) -> None:
    assert server.deliver(oss(), timestamped=True).status_code == 202


def test_rotation_either_secret_held_verifies(make_server: Callable[..., Server]) -> None:
    server = make_server(secrets=["whsec_new-current", "whsec_old-previous"])
    both = ["whsec_new-current", "whsec_old-previous"]
    for signer, event_id in ((["whsec_old-previous"], "e_old"), (both, "e_both")):
        body = json.dumps(oss()).encode()
        headers = signed_headers(body, signer, topic=REQUESTED, event_id=event_id)
        assert server.client.post(server.endpoint, content=body, headers=headers).status_code == 202
    assert set(server.events()) == {"e_old", "e_both"}


def test_header_names_are_case_insensitive(server: Server) -> None:
    body = json.dumps(oss()).encode()
    headers = {k.upper() if k.startswith("x-") else k: v
               for k, v in signed_headers(body, server.secrets, topic=REQUESTED, event_id="evt_case").items()}
    assert "X-OUTPOST-SIGNATURE" in headers
    assert server.client.post(server.endpoint, content=body, headers=headers).status_code == 202
    assert server.job_of("evt_case") is not None  # the topic header was read too


# --- 400 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"[]", b"[{}]", b'"a string"', b"42", b"null", b"true", b"", b"{", b"{'single': 'quotes'}",
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e400}',  # Python's json would take these; JSON does not
    b"\xff\xfe{\x00}\x00", '{"a": "é"}'.encode("utf-16-le"),  # not UTF-8
    b'{"a": "\xe9"}',  # Latin-1, not UTF-8
    b"[" * 100_000,  # nesting past the recursion limit
])
def test_signed_body_that_is_not_a_json_object_is_400(server: Server, body: bytes) -> None:
    response = server.deliver(body, event_id="evt_400")
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "body is not a JSON object"}
    assert server.events() == {}


def test_unicode_and_deep_but_sane_objects_are_accepted(server: Server) -> None:
    event = oss(code="HRT-ÉTÉ-😀")
    event["note"] = "\\ud83d\\ude00 is an escaped pair"
    body = json.dumps(event).encode()  # ensure_ascii: the emoji travels as a surrogate-pair escape
    assert "\\ud83d\\ude00" in body.decode()
    assert server.deliver(body, event_id="evt_unicode").status_code == 202
    assert server.job_of("evt_unicode")["creative"]["code"] == "HRT-ÉTÉ-😀"
    nested = {"a": json.loads("[" * 63 + "]" * 63)}  # 64 levels, the object's own included
    assert server.deliver(nested, topic="platform.other", event_id="evt_nested").status_code == 202


# --- 413 ------------------------------------------------------------------------------------------


def test_413_by_content_length_and_the_limit_is_inclusive(make_server: Callable[..., Server]) -> None:
    server = make_server(max_body_bytes=2048)
    base = json.dumps(oss()).encode()
    exact = base[:-1] + b", " + b'"pad": "' + b"x" * (2048 - len(base) - 11) + b'"}'
    assert len(exact) == 2048
    assert server.deliver(exact, event_id="evt_exact").status_code == 202
    over = exact[:-2] + b'x"}'
    assert len(over) == 2049
    response = server.deliver(over, event_id="evt_over")
    assert response.status_code == 413
    assert "2048" in response.json()["error"]
    assert set(server.events()) == {"evt_exact"}


def test_413_for_a_chunked_body_without_content_length(make_server: Callable[..., Server]) -> None:
    server = make_server(max_body_bytes=2048)
    body = b'{"pad": "' + b"x" * 4096 + b'"}'
    headers = signed_headers(body, server.secrets, topic=REQUESTED, event_id="evt_chunked")

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 512):
            yield body[i:i + 512]

    request = server.client.build_request("POST", server.endpoint, content=chunks(), headers=headers)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = server.client.send(request)
    assert response.status_code == 413
    assert server.events() == {}
    # A chunked body under the limit is read whole and accepted.
    small = json.dumps(oss()).encode()
    headers = signed_headers(small, server.secrets, topic=REQUESTED, event_id="evt_small_chunked")
    request = server.client.build_request("POST", server.endpoint, content=iter([small[:100], small[100:]]),
                                          headers=headers)
    assert "content-length" not in request.headers
    assert server.client.send(request).status_code == 202


# --- header prefix and modes ------------------------------------------------------------------


def test_custom_header_prefix(make_server: Callable[..., Server]) -> None:
    server = make_server(header_prefix="X-Acme-")
    event = oss()
    assert server.deliver(event, event_id="evt_acme").status_code == 202  # signed with x-acme-* headers
    assert server.job_of("evt_acme") is not None  # topic read from x-acme-topic
    # The default prefix is not looked at any more.
    body = json.dumps(event).encode()
    default = signed_headers(body, server.secrets, topic=REQUESTED, event_id="evt_default")
    assert server.client.post(server.endpoint, content=body, headers=default).status_code == 401
    assert set(server.events()) == {"evt_acme"}


def test_standard_webhooks_mode(make_server: Callable[..., Server]) -> None:
    secret = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
    server = make_server(secrets=[secret], mode="standard")
    response = server.deliver(oss(), event_id="msg_std_1")
    assert response.status_code == 202
    assert response.json()["event_id"] == "msg_std_1"  # webhook-id is the event id
    assert server.job_of("msg_std_1") is not None  # topic from webhook-topic
    assert server.deliver(oss(), event_id="msg_std_1").status_code == 200
    # An Outpost default-mode signature is not accepted in standard mode.
    body = json.dumps(oss()).encode()
    outpost = signed_headers(body, [secret], topic=REQUESTED, event_id="evt_wrong_mode")
    assert server.client.post(server.endpoint, content=body, headers=outpost).status_code == 401


def test_standard_webhooks_mode_with_custom_prefix(make_server: Callable[..., Server]) -> None:
    secret = "whsec_" + base64.b64encode(b"another-standard-key").decode()
    server = make_server(secrets=[secret], mode="standard", header_prefix="x-acme-")
    assert server.deliver(oss(), event_id="msg_acme").status_code == 202
    assert server.job_of("msg_acme") is not None


# --- invalid payloads, unknown topics -----------------------------------------------------------


@pytest.mark.parametrize("mutate, field", [
    (lambda e: e.pop("projectId"), "projectId"),
    (lambda e: e["creative"].pop("code"), "creative.code"),
    (lambda e: e["creative"].update(variation="2"), "creative.variation"),
    (lambda e: e["creative"].update(variation=2**64), "creative.variation"),
    (lambda e: e["creative"].update(kind="audio"), "creative.kind"),
    (lambda e: e["creative"].update(aspectRatio="tall"), "creative.aspectRatio"),
    (lambda e: e["fulfillment"].pop("uploadUrl"), "fulfillment.uploadUrl"),
    (lambda e: e["fulfillment"].update(expiresAt="tomorrow"), "fulfillment.expiresAt"),
    (lambda e: e.update(fulfillment="nope"), "fulfillment"),
    (lambda e: e.clear(), "creative"),
])
def test_signed_invalid_payload_is_stored_202_and_its_job_is_invalid(
    server: Server, mutate: Callable[[dict[str, Any]], Any], field: str
) -> None:
    event = oss()
    mutate(event)
    response = server.deliver(event, event_id="evt_invalid")
    assert response.status_code == 202, response.text
    assert "evt_invalid" in server.events()
    job = server.job_of("evt_invalid")
    assert job is not None
    assert job["status"] == "invalid"
    assert field in job["error"]
    # Redelivery does not make a second job.
    assert server.deliver(event, event_id="evt_invalid").status_code == 200
    assert len(server.jobs()) == 1


@pytest.mark.parametrize("topic", ["video.something_new", "", "VIDEO.SOURCE_REQUESTED"])
def test_unknown_topic_is_stored_202_and_makes_no_job(server: Server, topic: str) -> None:
    body = json.dumps({"anything": [1, 2, 3]}).encode()
    headers = signed_headers(body, server.secrets, topic=topic, event_id="evt_unknown")
    if not topic:
        del headers["x-outpost-topic"]
    response = server.client.post(server.endpoint, content=body, headers=headers)
    assert response.status_code == 202
    stored = server.events()["evt_unknown"]
    assert stored["body"] == body.decode()
    assert "unknown topic" in stored["note"]
    assert server.jobs() == []


# --- lifecycle ------------------------------------------------------------------------------------


def lifecycle(event: dict[str, Any], *, storage_key: bool = True, coords: bool = True,
              top_level_key: bool = False, **extra: Any) -> dict[str, Any]:
    """A follow-up event for ``event``: its coordinates and/or storage key, as the platform outlines."""
    out: dict[str, Any] = {}
    if coords:
        out["projectId"] = event["projectId"]
        out["projectSlug"] = event["projectSlug"]
        out["creative"] = {k: v for k, v in event["creative"].items() if k in ("code", "variation", "locale", "kind",
                                                                              "aspectRatio")}
    if storage_key:
        key = event["fulfillment"]["storageKey"]
        if top_level_key:
            out["storageKey"] = key
        else:
            out["fulfillment"] = {"storageKey": key}
    out.update(extra)
    return out


@pytest.mark.parametrize("topic, status", [
    ("video.source_fulfilled", "fulfilled"), ("video.source_rejected", "rejected"),
    ("video.source_timeout", "timed_out"),
])
def test_lifecycle_closes_the_job_found_by_storage_key(server: Server, topic: str, status: str) -> None:
    request = oss(code=unique_code())
    assert server.deliver(request, event_id="evt_req").status_code == 202
    follow = lifecycle(request, coords=False, top_level_key=True, reason="wrong aspect")
    response = server.deliver(follow, topic=topic, event_id="evt_follow")
    assert response.status_code == 202
    job = server.job_of("evt_req")
    assert job["status"] == status
    assert job["lifecycle_reason"] == "wrong aspect"
    assert server.events()["evt_follow"]["applied_job"] == job["id"]
    # The follow-up event is stored but makes no job of its own.
    assert len(server.jobs()) == 1


def test_lifecycle_prefers_storage_key_over_coordinates(server: Server) -> None:
    code = unique_code()
    feed, story = afs(code, "feed"), afs(code, "story_reel", ("9x16",))
    assert server.deliver(feed, event_id="evt_feed").status_code == 202
    assert server.deliver(story, event_id="evt_story").status_code == 202  # newest on these coordinates
    # Same coordinates, but the storage key names the feed job.
    follow = lifecycle(feed)
    assert server.deliver(follow, topic="video.source_fulfilled").status_code == 202
    assert server.job_of("evt_feed")["status"] == "fulfilled"
    assert server.job_of("evt_story")["status"] == "queued"


def test_lifecycle_by_coordinates_when_no_storage_key(server: Server) -> None:
    code = unique_code()
    tall, square = oss(code=code, aspect="9x16"), oss(code=code, aspect="1x1")
    other_variation = oss(code=code, aspect="1x1", variation=3)
    for event, event_id in ((tall, "evt_tall"), (square, "evt_square"), (other_variation, "evt_v3")):
        assert server.deliver(event, event_id=event_id).status_code == 202
    # Coordinates plus the aspect the event names pick the 9x16 job, though the 1x1 one is newer.
    follow = lifecycle(tall, storage_key=False, rejectionReason="corrupt file")
    assert server.deliver(follow, topic="video.source_rejected").status_code == 202
    assert server.job_of("evt_tall")["status"] == "rejected"
    assert server.job_of("evt_tall")["lifecycle_reason"] == "corrupt file"
    assert server.job_of("evt_square")["status"] == "queued"
    assert server.job_of("evt_v3")["status"] == "queued"


def test_lifecycle_before_its_request_applies_when_the_request_arrives(server: Server) -> None:
    code = unique_code()
    request = oss(code=code)
    timeout = lifecycle(request, coords=False)
    response = server.deliver(timeout, topic="video.source_timeout", event_id="evt_early")
    assert response.status_code == 202
    assert server.jobs() == []
    assert server.events()["evt_early"]["applied_job"] is None
    assert server.deliver(request, event_id="evt_late_req").status_code == 202
    job = server.job_of("evt_late_req")
    assert job["status"] == "timed_out"
    assert server.events()["evt_early"]["applied_job"] == job["id"]


def test_early_lifecycle_by_coordinates_applies_too(server: Server) -> None:
    request = oss(code=unique_code())
    early = lifecycle(request, storage_key=False)
    assert server.deliver(early, topic="video.source_fulfilled", event_id="evt_early_c").status_code == 202
    assert server.deliver(request, event_id="evt_req_c").status_code == 202
    assert server.job_of("evt_req_c")["status"] == "fulfilled"


def test_early_lifecycle_for_other_coordinates_does_not_apply(server: Server) -> None:
    request = oss(code=unique_code())
    early = lifecycle(oss(code=unique_code()), storage_key=False)
    assert server.deliver(early, topic="video.source_fulfilled").status_code == 202
    assert server.deliver(request, event_id="evt_unrelated").status_code == 202
    assert server.job_of("evt_unrelated")["status"] == "queued"


def test_lifecycle_that_cannot_name_a_job_is_stored_and_noted(server: Server) -> None:
    assert server.deliver(oss(), event_id="evt_some_job").status_code == 202
    response = server.deliver({"projectId": PROJECT}, topic="video.source_fulfilled", event_id="evt_vague")
    assert response.status_code == 202
    stored = server.events()["evt_vague"]
    assert stored["note"].startswith("unmatched")
    assert stored["lc_status"] is None
    assert server.job_of("evt_some_job")["status"] == "queued"


def test_invalid_request_next_to_an_early_lifecycle_is_still_stored(server: Server) -> None:
    """An invalid request has no usable coordinates; a pending lifecycle event must not trip it."""
    request = oss(code=unique_code())
    assert server.deliver(lifecycle(request), topic="video.source_timeout").status_code == 202
    broken = dict(request, creative={**request["creative"], "kind": "hologram"})
    assert server.deliver(broken, event_id="evt_broken").status_code == 202
    assert server.job_of("evt_broken")["status"] == "invalid"
    assert server.deliver({}, event_id="evt_empty").status_code == 202
    assert server.job_of("evt_empty")["status"] == "invalid"


# --- hostile input: signed, and still only data ----------------------------------------------------


def nested_body(levels: int, bracket: str) -> bytes:
    """An object nested ``levels`` deep (the object itself is the first level), by arrays or by objects."""
    if bracket == "[":
        return b'{"a": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    return b'{"a": ' * (levels - 1) + b"{}" + b"}" * (levels - 1)


@pytest.mark.parametrize("bracket", ["[", "{"])
def test_a_body_nested_deeper_than_64_levels_is_400_and_not_stored(server: Server, bracket: str) -> None:
    assert server.deliver(nested_body(64, bracket), topic="platform.other", event_id="evt_64").status_code == 202
    response = server.deliver(nested_body(65, bracket), event_id="evt_65")
    assert response.status_code == 400
    assert response.json() == {"error": "body is nested deeper than 64 levels"}
    assert set(server.events()) == {"evt_64"}


def test_an_event_id_over_255_bytes_is_400_and_not_stored(server: Server) -> None:
    response = server.deliver(oss(), event_id="e" * 256)
    assert response.status_code == 400
    assert response.json() == {"error": "event id over 255 bytes"}
    assert server.events() == {}
    assert server.deliver(oss(), event_id="e" * 255).status_code == 202
    assert set(server.events()) == {"e" * 255}


def job_row(server: Server, event_id: str) -> dict[str, Any]:
    """The job's row as stored (an operator's tools render it; this reads what was written)."""
    with sqlite3.connect(server.db) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM jobs WHERE event_id = ?", (event_id,)).fetchone())


def in_hours(hours: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + hours * 3600))


@pytest.mark.parametrize("mutate, field, nulled", [
    (lambda e: e["creative"].update(code="H" * 1025), "creative.code", "code"),
    (lambda e: e["creative"].update(code="é" * 513), "creative.code", "code"),  # 1,026 bytes
    (lambda e: e["creative"].update(locale="l" * 1025), "creative.locale", "locale"),
    (lambda e: e["creative"].update(kind="v" * 1025), "creative.kind", None),
    (lambda e: e.update(projectId="p" * 1025), "projectId", "project_id"),
    (lambda e: e.update(projectSlug="s" * 1025), "projectSlug", None),
    (lambda e: e["fulfillment"].update(storageKey="k" * 3000), "fulfillment.storageKey", "storage_key"),
    (lambda e: (e["creative"].pop("aspectRatio"), e["creative"].update(
        placementFamily="feed", acceptedAspects=[f"{n}x1" for n in range(1, 34)])), "creative.acceptedAspects", None),
    (lambda e: e["fulfillment"].update(expiresAt=in_hours(24.1)), "fulfillment.expiresAt", None),
    (lambda e: e["fulfillment"].update(expiresAt="9999-12-31T23:59:59-23:59"), "fulfillment.expiresAt", None),
    (lambda e: e["creative"].update(code="HRT\x001212"), "creative.code", "code"),
    (lambda e: e["creative"].update(locale="en\ud800"), "creative.locale", "locale"),
    (lambda e: e["facebook"].update(ads=[{"name": "\udc00"}]), "facebook.ads.0.name", None),
])
def test_a_request_past_the_bounds_is_202_and_its_job_invalid(
    server: Server, mutate: Callable[[dict[str, Any]], Any], field: str, nulled: str | None
) -> None:
    event = oss()
    mutate(event)
    response = server.deliver(event, event_id="evt_hostile")  # JSON escapes a NUL or a lone surrogate
    assert response.status_code == 202, response.text
    job = job_row(server, "evt_hostile")
    assert job["status"] == "invalid"
    assert field in job["error"]
    assert len(job["error"]) < 300  # a bounded reason, whatever the field held
    # The coordinates it could not hold safely are not stored; the others are, to find the job by.
    for column in ("storage_key", "project_id", "code", "locale"):
        assert (job[column] is None) == (column == nulled), column
    assert server.payload_of("evt_hostile") == json.dumps(event)  # the body as received


def test_a_deadline_just_within_24_hours_is_accepted(server: Server) -> None:
    assert server.deliver(oss(expiresAt=in_hours(23.9)), event_id="evt_soon").status_code == 202
    assert job_row(server, "evt_soon")["status"] == "queued"


def test_a_lone_surrogate_outside_a_request_is_stored_as_received(server: Server) -> None:
    body = b'{"note": "\\ud800 alone", "nul": "\\u0000"}'
    assert server.deliver(body, topic="platform.other", event_id="evt_odd").status_code == 202
    assert server.events()["evt_odd"]["body"] == body.decode()


def test_a_request_repeating_a_stored_wait_token_is_a_duplicate_whatever_its_event_id(server: Server) -> None:
    event = oss()
    assert server.deliver(event, event_id="evt_first").status_code == 202
    replay = server.deliver(event, event_id="evt_replay")  # a captured body under a fresh (unsigned) id
    assert replay.status_code == 200
    assert replay.json() == {"status": "duplicate", "event_id": "evt_replay"}
    other = oss(code="HRT-9999")
    other["fulfillment"]["completeCallbackUrl"] = event["fulfillment"]["completeCallbackUrl"]
    assert server.deliver(other, event_id="evt_other").status_code == 200
    assert list(server.events()) == ["evt_first"]
    assert [j["event_id"] for j in server.jobs()] == ["evt_first"]
    token = event["fulfillment"]["completeCallbackUrl"]
    assert job_row(server, "evt_first")["callback_key"] == wait_token_key(token)


def test_replays_of_an_invalid_request_make_one_job(server: Server) -> None:
    event = oss()
    event["creative"]["kind"] = "hologram"
    assert [server.deliver(event).status_code for _ in range(3)] == [202, 200, 200]
    assert len(server.jobs()) == 1


def test_concurrent_deliveries_of_one_wait_token_make_one_job(server: Server) -> None:
    body = json.dumps(oss()).encode()

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            sends = [client.post(server.endpoint, content=body,
                                 headers=signed_headers(body, server.secrets, topic=REQUESTED, event_id=new_id()))
                     for _ in range(40)]
            return [r.status_code for r in await asyncio.gather(*sends)]

    assert sorted(asyncio.run(send_all())) == [200] * 39 + [202]
    assert len(server.events()) == 1
    assert len(server.jobs()) == 1


@pytest.mark.parametrize("topic", ["video.source_fulfilled", "video.source_rejected", "video.source_timeout"])
def test_a_lifecycle_topic_on_a_requests_body_is_stored_and_changes_nothing(server: Server, topic: str) -> None:
    body = json.dumps(oss(code=unique_code())).encode()
    assert server.deliver(body, event_id="evt_req").status_code == 202
    assert server.deliver(body, topic=topic, event_id="evt_forged").status_code == 202  # the topic is not signed
    assert server.job_of("evt_req")["status"] == "queued"
    stored = server.events()["evt_forged"]
    assert stored["lc_status"] is None and stored["applied_job"] is None
    assert "fulfillment.uploadUrl" in stored["note"]


def test_a_lifecycle_event_with_unusable_locators_is_stored_and_changes_nothing(server: Server) -> None:
    request = oss(code=unique_code())
    assert server.deliver(request, event_id="evt_req").status_code == 202
    follow = lifecycle(request, storage_key=False)
    follow["storageKey"] = "k" * 3000
    follow["creative"]["code"] += "\x00"
    response = server.deliver(follow, topic="video.source_timeout", event_id="evt_unusable")
    assert response.status_code == 202
    assert server.events()["evt_unusable"]["note"].startswith("unmatched")
    assert server.job_of("evt_req")["status"] == "queued"


def test_require_timestamp_refuses_outpost_signatures_without_one(make_server: Callable[..., Server]) -> None:
    server = make_server(require_timestamp=True)
    response = server.deliver(oss(), event_id="evt_plain")
    assert response.status_code == 401
    assert response.json() == {"error": "signature refused", "reason": "missing_timestamp"}
    assert server.deliver(oss(), event_id="evt_timestamped", timestamped=True).status_code == 202
    assert set(server.events()) == {"evt_timestamped"}


def test_require_timestamp_takes_standard_webhooks_which_always_sign_one(make_server: Callable[..., Server]) -> None:
    secret = "whsec_" + base64.b64encode(b"standard-webhooks-key-32-bytes!!").decode()
    server = make_server(secrets=[secret], mode="standard", require_timestamp=True)
    assert server.deliver(oss(), event_id="msg_std").status_code == 202


# --- the other routes ---------------------------------------------------------------------------


def test_health_ready_and_metrics(server: Server) -> None:
    assert server.client.get(f"{server.url}/healthz").status_code == 200
    assert server.client.get(f"{server.url}/readyz").status_code == 200
    server.deliver(oss())
    server.deliver(b"[]")
    metrics = server.client.get(f"{server.url}/metrics")
    assert metrics.status_code == 200
    assert 'fulfiller_deliveries_total{outcome="accepted",topic="video.source_requested"} 1.0' in metrics.text
    assert 'fulfiller_deliveries_total{outcome="bad_body",topic="video.source_requested"} 1.0' in metrics.text
    assert "fulfiller_ack_latency_seconds_count 2.0" in metrics.text


def test_admin_needs_the_token(server: Server) -> None:
    assert server.client.get(f"{server.url}/admin/jobs").status_code == 401
    bad = server.client.get(f"{server.url}/admin/jobs", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    good = server.client.get(f"{server.url}/admin/jobs", headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"})
    assert good.status_code == 200


def test_receiver_only_answers_post(server: Server) -> None:
    assert server.client.get(server.endpoint).status_code == 405
