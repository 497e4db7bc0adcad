"""The operator API under ``/admin``: auth, filters, paging, rerun and skip in every state, redaction.

Most tests run the app in process (``httpx.ASGITransport``, lifespan included)
with no worker: jobs are made by signed deliveries to the receiver and moved
between states through the store, exactly as a worker would move them. The
redaction test at the end runs real workers against the platform double, so
the errors and attempts it checks are the ones the engine really writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfiller.app import create_app
from fulfiller.config import Config, parse_config
from fulfiller.jobs import FINAL, Status
from fulfiller.ops.testevent import sample_event, signed_headers
from fulfiller.store import Store
from support.netguard import block_network
from support.odd_jobs import ODD_ROWS, job_row

TOKEN = "admin-token-3d5e7f9a1b"
SECRET = "whsec_admin-tests-secret-2c4e6a8b"
SIGNATURE = "9f2b6c1d8e7a5f4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"
CREDENTIAL = "AKIDSECRETCREDENTIAL"
OWNER = "test-worker"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


def config_for(tmp_path: Path, *, token: str = TOKEN, worker: dict[str, Any] | None = None) -> Config:
    (tmp_path / "masters").mkdir(exist_ok=True)
    raw = {
        "state": f"sqlite:///{tmp_path / 'fulfiller.db'}",
        "receiver": {"secrets": [SECRET]},
        "admin": {"token": token},
        "worker": {"allow_insecure_http": True, "allowed_upload_hosts": ["127.0.0.1"],
                   "allowed_callback_hosts": ["127.0.0.1"], **(worker or {})},
        "catalogs": {"local": {"type": "local", "root": str(tmp_path / "masters")}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    return parse_config(json.dumps(raw), env={})


def upload_url(code: str) -> str:
    return (f"https://bucket.r2.cloudflarestorage.com/fb-external/p/{code}.video?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={CREDENTIAL}%2F20260101%2Fauto%2Fs3%2Faws4_request&X-Amz-Expires=3600"
            f"&X-Amz-Signature={SIGNATURE}")


def callback_url(token: str) -> str:
    return f"https://api.trigger.dev/api/v1/waitpoints/tokens/{token}/complete"


@dataclass
class Admin:
    client: httpx.AsyncClient
    store: Store

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(path, headers=kwargs.pop("headers", AUTH), **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(path, headers=kwargs.pop("headers", AUTH), **kwargs)

    async def deliver(self, body: dict[str, Any] | bytes, *, topic: str = "video.source_requested") -> str:
        """A signed delivery to the receiver; the event id."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        event_id = f"evt_{uuid.uuid4().hex}"
        r = await self.client.post("/webhooks/outpost", content=raw,
                                   headers=signed_headers(raw, [SECRET], topic=topic, event_id=event_id))
        assert r.status_code == 202, r.text
        return event_id

    async def job_for(self, event_id: str) -> dict[str, Any]:
        listed = (await self.get("/admin/jobs", params={"limit": 500})).json()["jobs"]
        found = [j for j in listed if j["event_id"] == event_id]
        assert found, f"no job for {event_id}"
        return found[0]

    async def make(self, status: str = Status.QUEUED, *, code: str = "HRT-1212", expires_in_s: int = 3600,
                   token: str | None = None, **fields: Any) -> dict[str, Any]:
        """A job in ``status``, moved there the way a worker (or the platform) would move it."""
        body = sample_event(upload_url(code), callback_url(token or f"waitpoint_{uuid.uuid4().hex[:12]}"),
                            code=code, expires_in_s=expires_in_s)
        if status == Status.INVALID:
            del body["creative"]["kind"]
        job = await self.job_for(await self.deliver(body))
        if status in (Status.QUEUED, Status.INVALID):
            assert job["status"] == status
            return job
        if status in (Status.FULFILLED, Status.REJECTED, Status.TIMED_OUT):
            topic = {Status.FULFILLED: "video.source_fulfilled", Status.REJECTED: "video.source_rejected",
                     Status.TIMED_OUT: "video.source_timeout"}[status]
            await self.deliver({"storageKey": body["fulfillment"]["storageKey"], "reason": "from the platform"},
                               topic=topic)
        else:
            claimed = await self.store.claim(OWNER, 60)
            assert claimed is not None and claimed.id == job["id"], "make() expects no other queued job"
            if status != Status.RUNNING:
                defaults = {Status.FAILED: {"error": "callback answered 400: bad"},
                            Status.SKIPPED: {"skip_reason": "no_match:aspect=9x16"},
                            Status.EXPIRED: {"error": "callback answered 410: the request expired"},
                            Status.SUPERSEDED: {"error": "callback answered 409"}}.get(status, {})
                assert await self.store.finish(job["id"], OWNER, status, {**defaults, **fields})
        job = (await self.get(f"/admin/jobs/{job['id']}")).json()
        assert job["status"] == status
        return job


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    app = create_app(config_for(tmp_path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://fulfiller.test") as client:
            yield Admin(client, app.state.store)


# ------------------------------------------------------------------------------------------------
# auth

ROUTES = [("GET", "/admin/jobs"), ("GET", "/admin/jobs/{id}"), ("POST", "/admin/jobs/{id}/rerun"),
          ("POST", "/admin/jobs/{id}/skip"), ("GET", "/admin/refusals")]


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not-the-token"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
    {"X-Admin-Token": TOKEN},
], ids=["missing", "wrong", "longer", "shorter", "basic-scheme", "no-scheme", "empty", "other-header"])
async def test_every_admin_route_refuses_a_missing_or_wrong_token(admin: Admin, headers: dict[str, str]) -> None:
    job = await admin.make(Status.FAILED)
    for method, path in ROUTES:
        r = await admin.client.request(method, path.format(id=job["id"]), headers=headers,
                                       json={"reason": "x"} if path.endswith("skip") else None)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"error": "missing or wrong admin token"}
        assert TOKEN not in r.text
    # refused calls changed nothing
    assert (await admin.get(f"/admin/jobs/{job['id']}")).json()["status"] == Status.FAILED


async def test_a_refused_token_is_logged_with_the_client_and_path_never_the_token(
        admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulfiller.admin")
    for headers in ({"Authorization": f"Bearer {TOKEN}x"}, {}):
        assert (await admin.get("/admin/jobs", headers=headers, params={"status": "failed"})).status_code == 401
    assert (await admin.post("/admin/jobs/job_x/rerun", headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
            ).status_code == 401
    refused = [r for r in caplog.records if r.name == "fulfiller.admin"]
    assert [(r.levelname, r.getMessage(), r.http_status, r.client, r.path) for r in refused] == [
        ("WARNING", "admin token refused", 401, "127.0.0.1", "/admin/jobs"),
        ("WARNING", "admin token refused", 401, "127.0.0.1", "/admin/jobs"),
        ("WARNING", "admin token refused", 401, "127.0.0.1", "/admin/jobs/job_x/rerun"),
    ]
    assert TOKEN[:-1] not in repr([(r.getMessage(), r.__dict__) for r in caplog.records])


async def test_the_right_token_opens_every_route(admin: Admin) -> None:
    job = await admin.make(Status.FAILED)
    assert (await admin.get("/admin/jobs")).status_code == 200
    assert (await admin.get(f"/admin/jobs/{job['id']}")).status_code == 200
    # the scheme is case blind (RFC 7235)
    r = await admin.get(f"/admin/jobs/{job['id']}", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200
    assert (await admin.post(f"/admin/jobs/{job['id']}/rerun")).status_code == 202
    assert (await admin.post(f"/admin/jobs/{job['id']}/skip", json={"reason": "gone"})).status_code == 202


async def test_the_console_page_needs_no_token_and_carries_no_data(admin: Admin) -> None:
    await admin.make(Status.FAILED, code="HRT-7777")
    r = await admin.client.get("/admin")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "HRT-7777" not in r.text and TOKEN not in r.text
    assert "Content-Security-Policy" in r.text


async def test_without_a_token_configured_no_admin_route_exists(tmp_path: Path) -> None:
    app = create_app(config_for(tmp_path, token=""))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f.test") as client:
            for method, path in [("GET", "/admin"), *ROUTES]:
                for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
                    r = await client.request(method, path.format(id="job_x"), headers=headers,
                                             json={"reason": "x"} if path.endswith("skip") else None)
                    assert r.status_code == 404, (method, path, headers)
            assert (await client.get("/healthz")).status_code == 200


# ------------------------------------------------------------------------------------------------
# listing, filters, paging


async def test_list_is_newest_first_with_the_spec_fields(admin: Admin) -> None:
    first = await admin.make(Status.COMPLETED, code="HRT-1")
    second = await admin.make(Status.QUEUED, code="HRT-2")
    body = (await admin.get("/admin/jobs")).json()
    assert [j["id"] for j in body["jobs"]] == [second["id"], first["id"]]
    assert body["limit"] == 50 and body["offset"] == 0 and body["next_offset"] is None
    listed = body["jobs"][0]
    for key in ("id", "event_id", "status", "request_kind", "creative", "storage_key", "chosen_aspect", "extension",
                "content_type", "content_hash", "bytes", "skip_reason", "error", "expires_at", "created_at",
                "updated_at", "attempts"):
        assert key in listed, key
    assert listed["request_kind"] == "oss"
    assert listed["creative"]["code"] == "HRT-2"
    assert listed["expires_at"].endswith("Z")
    assert "event" not in listed  # the payload is for the job page only


async def test_filter_by_status(admin: Admin) -> None:
    failed = await admin.make(Status.FAILED, code="HRT-10")
    await admin.make(Status.COMPLETED, code="HRT-11")
    skipped = await admin.make(Status.SKIPPED, code="HRT-12")
    await admin.make(Status.QUEUED, code="HRT-13")
    assert [j["id"] for j in (await admin.get("/admin/jobs?status=failed")).json()["jobs"]] == [failed["id"]]
    assert [j["id"] for j in (await admin.get("/admin/jobs?status=skipped")).json()["jobs"]] == [skipped["id"]]
    assert (await admin.get("/admin/jobs?status=running")).json()["jobs"] == []
    assert len((await admin.get("/admin/jobs?status=")).json()["jobs"]) == 4  # empty: no filter
    r = await admin.get("/admin/jobs?status=done")
    assert r.status_code == 400
    assert "done" in r.json()["error"] and r.json()["statuses"] == list(tuple(Status))


async def test_filter_by_code_substring_case_blind_and_with_status(admin: Admin) -> None:
    a = await admin.make(Status.FAILED, code="HRT-1212")
    b = await admin.make(Status.COMPLETED, code="HRT-1299")
    c = await admin.make(Status.FAILED, code="ABC-1212")

    async def ids(query: str) -> set[str]:
        return {j["id"] for j in (await admin.get(f"/admin/jobs?{query}")).json()["jobs"]}

    assert await ids("code=hrt-12") == {a["id"], b["id"]}
    assert await ids("code=HRT-1212") == {a["id"]}
    assert await ids("code=1212") == {a["id"], c["id"]}
    assert await ids("code=1212&status=failed") == {a["id"], c["id"]}
    assert await ids("code=1212&status=completed") == set()
    assert await ids("code=HRT&status=completed") == {b["id"]}
    assert await ids("code=nothing-like-it") == set()


async def test_paging_with_limit_offset_and_next_offset(admin: Admin) -> None:
    made = [await admin.make(Status.QUEUED, code=f"PG-{i}") for i in range(7)]
    newest_first = [j["id"] for j in reversed(made)]
    seen: list[str] = []
    offset: int | None = 0
    pages = []
    while offset is not None:
        body = (await admin.get("/admin/jobs", params={"limit": 3, "offset": offset})).json()
        assert body["limit"] == 3 and body["offset"] == offset
        pages.append(len(body["jobs"]))
        seen += [j["id"] for j in body["jobs"]]
        offset = body["next_offset"]
    assert pages == [3, 3, 1]
    assert seen == newest_first
    # an exact fit has no next page
    body = (await admin.get("/admin/jobs", params={"limit": 7})).json()
    assert len(body["jobs"]) == 7 and body["next_offset"] is None
    # past the end: empty, no next page
    body = (await admin.get("/admin/jobs", params={"limit": 3, "offset": 50})).json()
    assert body["jobs"] == [] and body["next_offset"] is None
    # paging combines with filters
    body = (await admin.get("/admin/jobs", params={"limit": 2, "code": "PG-", "status": "queued"})).json()
    assert len(body["jobs"]) == 2 and body["next_offset"] == 2


@pytest.mark.parametrize(("query", "limit", "offset"), [
    ("limit=0", 1, 0), ("limit=-4", 1, 0), ("limit=100000", 500, 0), ("limit=abc", 50, 0),
    ("offset=-3", 50, 0), ("offset=x", 50, 0), ("limit=2&offset=1", 2, 1),
])
async def test_paging_parameters_are_clamped(admin: Admin, query: str, limit: int, offset: int) -> None:
    body = (await admin.get(f"/admin/jobs?{query}")).json()
    assert (body["limit"], body["offset"]) == (limit, offset)


# ------------------------------------------------------------------------------------------------
# one job


async def test_one_job_is_the_object_itself_with_attempts_and_the_redacted_event(admin: Admin) -> None:
    job = await admin.make(Status.QUEUED, code="HRT-55")
    r = await admin.get(f"/admin/jobs/{job['id']}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == job["id"] and body["status"] == "queued" and body["attempts"] == []
    assert body["event"]["creative"]["code"] == "HRT-55"
    assert body["event"]["fulfillment"]["storageKey"] == body["storage_key"]
    assert body["event"]["fulfillment"]["uploadUrl"].endswith("?REDACTED")  # the whole query: it holds the signature
    assert body["event"]["fulfillment"]["completeCallbackUrl"] == (  # the path past two segments: it holds the token
        "https://api.trigger.dev/api/v1/REDACTED/REDACTED/REDACTED/REDACTED")


async def test_every_odd_stored_job_lists_and_shows(admin: Admin) -> None:
    """Jobs stored before intake bounded what it takes, or edited by hand (see support.odd_jobs): a page that
    holds one answers 200, and so does the job itself."""
    event_id = await admin.deliver({"a": 1}, topic="other.topic")  # a stored event for the rows to belong to
    names = {}
    for name, row in ODD_ROWS.items():
        job_id, sql, values = job_row(event_id, **row)
        await admin.store.writer.submit(lambda cur: admin.store.dialect.execute(cur, sql, values))  # type: ignore[attr-defined]
        names[job_id] = name
    listed = await admin.get("/admin/jobs", params={"limit": 500})
    assert listed.status_code == 200
    assert set(names) <= {j["id"] for j in listed.json()["jobs"]}
    for job_id, name in names.items():
        one = await admin.get(f"/admin/jobs/{job_id}")
        assert (one.status_code, one.json()["id"]) == (200, job_id), name
    shown = {names[j["id"]]: j for j in listed.json()["jobs"] if j["id"] in names}
    assert shown["expires after year 9999"]["expires_at"] == "9999-12-31T23:59:59.999Z"
    assert shown["lone surrogates"]["creative"]["code"] == "\ufffdHRT"


async def test_an_unknown_job_is_404_on_every_route(admin: Admin) -> None:
    assert (await admin.get("/admin/jobs/job_nope")).status_code == 404
    r = await admin.post("/admin/jobs/job_nope/rerun")
    assert (r.status_code, r.json()) == (404, {"error": "no such job"})
    r = await admin.post("/admin/jobs/job_nope/skip", json={"reason": "x"})
    assert (r.status_code, r.json()) == (404, {"error": "no such job"})


# ------------------------------------------------------------------------------------------------
# rerun and skip, state by state

# SPEC: 202 re-queued; 409 when the deadline has passed or the job is running (and invalid jobs can't run).
RERUNNABLE = [Status.QUEUED, Status.COMPLETED, Status.SKIPPED, Status.SUPERSEDED, Status.EXPIRED, Status.FAILED,
              Status.FULFILLED, Status.REJECTED, Status.TIMED_OUT]


@pytest.mark.parametrize("status", RERUNNABLE)
async def test_rerun_requeues_a_job_before_its_deadline(admin: Admin, status: str) -> None:
    job = await admin.make(status)
    r = await admin.post(f"/admin/jobs/{job['id']}/rerun")
    assert r.status_code == 202
    assert r.json() == {"status": "queued", "id": job["id"], "skip": False}
    after = (await admin.get(f"/admin/jobs/{job['id']}")).json()
    assert after["status"] == "queued"
    assert after["error"] is None and after["skip_reason"] is None
    # a worker picks it up as a plain run, not a skip
    claimed = await admin.store.claim(OWNER, 60)
    assert claimed is not None and claimed.id == job["id"] and claimed.skip_requested is None


# A skip answers the wait token with a negative-ack: only while nothing has answered it yet.
SKIPPABLE = [Status.QUEUED, Status.FAILED]
ALREADY_ANSWERED = [s for s in RERUNNABLE if s not in SKIPPABLE]


@pytest.mark.parametrize("status", SKIPPABLE)
async def test_skip_requeues_the_job_as_a_negative_ack_with_the_reason(admin: Admin, status: str) -> None:
    job = await admin.make(status)
    r = await admin.post(f"/admin/jobs/{job['id']}/skip", json={"reason": "  master withdrawn  "})
    assert r.status_code == 202
    assert r.json() == {"status": "queued", "id": job["id"], "skip": True}
    assert (await admin.get(f"/admin/jobs/{job['id']}")).json()["status"] == "queued"
    claimed = await admin.store.claim(OWNER, 60)
    assert claimed is not None and claimed.id == job["id"]
    assert claimed.skip_requested == "master withdrawn"


@pytest.mark.parametrize("status", ALREADY_ANSWERED)
async def test_skip_is_refused_409_once_the_request_is_answered(admin: Admin, status: str) -> None:
    job = await admin.make(status)
    r = await admin.post(f"/admin/jobs/{job['id']}/skip", json={"reason": "too late"})
    assert r.status_code == 409
    assert r.json()["error"].startswith("only a queued or failed job can be skipped")
    after = (await admin.get(f"/admin/jobs/{job['id']}")).json()
    assert after["status"] == status and after["updated_at"] == job["updated_at"]
    assert await admin.store.claim(OWNER, 60) is None  # nothing was queued


async def test_a_rerun_of_a_running_job_is_refused_409(admin: Admin) -> None:
    """A skip, unlike a rerun, takes a running job: its worker stops the try and sends the negative-ack."""
    job = await admin.make(Status.RUNNING)
    r = await admin.post(f"/admin/jobs/{job['id']}/rerun")
    assert r.status_code == 409
    assert "running" in r.json()["error"]
    assert (await admin.get(f"/admin/jobs/{job['id']}")).json()["status"] == "running"


@pytest.mark.parametrize("status", [Status.QUEUED, Status.FAILED, Status.EXPIRED, Status.COMPLETED])
@pytest.mark.parametrize("action", ["rerun", "skip"])
async def test_a_job_past_its_deadline_is_refused_409(admin: Admin, status: str, action: str) -> None:
    job = await admin.make(status, expires_in_s=-60)
    r = await admin.post(f"/admin/jobs/{job['id']}/{action}", json={"reason": "x"})
    assert r.status_code == 409
    if action == "rerun" or status in SKIPPABLE:
        assert r.json() == {"error": "the job's deadline (expiresAt) has passed; the platform falls back to manual upload"}
    after = (await admin.get(f"/admin/jobs/{job['id']}")).json()
    assert after["status"] == status and after["updated_at"] == job["updated_at"]


@pytest.mark.parametrize("action", ["rerun", "skip"])
async def test_an_invalid_job_is_refused_409(admin: Admin, action: str) -> None:
    job = await admin.make(Status.INVALID)
    r = await admin.post(f"/admin/jobs/{job['id']}/{action}", json={"reason": "x"})
    assert r.status_code == 409
    assert "invalid payload cannot be rerun" in r.json()["error"]
    assert (await admin.get(f"/admin/jobs/{job['id']}")).json()["status"] == "invalid"


@pytest.mark.parametrize("body", [None, b"", b"not json", b"[]", b'"reason"', b"{}", b'{"reason": ""}',
                                  b'{"reason": "   "}', b'{"reason": 42}', b'{"reason": null}', b'{"why": "x"}'])
async def test_skip_needs_a_reason(admin: Admin, body: bytes | None) -> None:
    job = await admin.make(Status.FAILED)
    r = await admin.post(f"/admin/jobs/{job['id']}/skip", content=body,
                         headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"error": 'body must be {"reason": "..."}'}
    assert (await admin.get(f"/admin/jobs/{job['id']}")).json()["status"] == "failed"


async def test_rerun_ignores_a_body(admin: Admin) -> None:
    job = await admin.make(Status.FAILED)
    r = await admin.post(f"/admin/jobs/{job['id']}/rerun", json={"reason": "ignored"})
    assert r.status_code == 202 and r.json()["skip"] is False


async def test_every_rerun_and_skip_leaves_an_audit_line(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    failed = await admin.make(Status.FAILED)
    running = await admin.make(Status.RUNNING)
    caplog.set_level(logging.INFO, logger="fulfiller.admin")
    asked = [(f"/admin/jobs/{failed['id']}/rerun", None, 202), (f"/admin/jobs/{failed['id']}/skip", b"{}", 400),
             (f"/admin/jobs/{failed['id']}/skip", b'{"reason": "withdrawn"}', 202),
             (f"/admin/jobs/{running['id']}/rerun", None, 409), ("/admin/jobs/job_none/skip", b'{"reason": "x"}', 404)]
    for path, body, status in asked:
        assert (await admin.post(path, content=body)).status_code == status
    lines = [r for r in caplog.records if r.name == "fulfiller.admin"]
    assert [(r.levelname, r.getMessage(), r.job_id, r.outcome, r.http_status, r.client, r.reason) for r in lines] == [
        ("INFO", "admin rerun queued", failed["id"], "queued", 202, "127.0.0.1", None),
        ("INFO", "admin skip no_reason", failed["id"], "no_reason", 400, "127.0.0.1", None),
        ("INFO", "admin skip queued", failed["id"], "queued", 202, "127.0.0.1", "withdrawn"),
        ("INFO", "admin rerun is_running", running["id"], "is_running", 409, "127.0.0.1", None),
        ("INFO", "admin skip not_found", "job_none", "not_found", 404, "127.0.0.1", "x"),
    ]


# ------------------------------------------------------------------------------------------------
# redaction, with real workers, real uploads and real refusals


async def _wait_final(admin: Admin, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = (await admin.get(f"/admin/jobs/{job_id}")).json()
        if job["status"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job stuck: {json.dumps(job, indent=1)}"
        await asyncio.sleep(0.05)


async def test_no_admin_answer_carries_a_credential(tmp_path: Path) -> None:
    from fulfiller.delivery.worker import worker_service
    from support.platform import new_token, run_platform, source_requested, storage_key

    config = config_for(tmp_path, worker={"poll_interval_s": 0.05, "retry_base_s": 0.05, "retry_max_s": 0.2,
                                          "http_timeout_s": 2})
    master = tmp_path / "masters" / "HRT-1" / "v1" / "en"
    master.mkdir(parents=True)
    (master / "9x16.mp4").write_bytes((Path(__file__).resolve().parents[1] / "media" / "9x16.mp4").read_bytes())
    app = create_app(config, service=worker_service(config))
    with run_platform(tmp_path / "platform") as platform:
        tokens = {name: new_token() for name in ("ok", "refused", "bad_sig", "dead_host")}
        platform.script_callbacks(tokens["refused"], [400])
        urls = {name: platform.presign(storage_key("HRT-1", "9x16")) for name in tokens}
        # a signature the platform refuses (403), and a host nobody listens on (connection refused, then expiry)
        urls["bad_sig"] = urls["bad_sig"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
        urls["dead_host"] = "http://127.0.0.1:9/r2/x?X-Amz-Signature=" + "ab" * 32
        signatures = [u.split("X-Amz-Signature=")[1] for u in urls.values()]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fulfiller.test") as client:
                admin = Admin(client, app.state.store)
                ids = {}
                for name, token in tokens.items():
                    body = source_requested("HRT-1", aspect="9x16", upload_url=urls[name],
                                            callback_url=platform.callback_url(token),
                                            expires_at=time.time() + (4 if name == "dead_host" else 3600))
                    ids[name] = (await admin.job_for(await admin.deliver(body)))["id"]
                finals = {name: await _wait_final(admin, job_id) for name, job_id in ids.items()}
                assert {n: j["status"] for n, j in finals.items()} == {
                    "ok": "completed", "refused": "failed", "bad_sig": "failed", "dead_host": "expired"}
                # rerun and skip go through too
                assert (await admin.post(f"/admin/jobs/{ids['refused']}/rerun")).status_code == 202
                assert (await _wait_final(admin, ids["refused"]))["status"] == "completed"
                r = await admin.post(f"/admin/jobs/{ids['bad_sig']}/skip", json={"reason": "no master"})
                assert r.status_code == 202
                assert (await _wait_final(admin, ids["bad_sig"]))["status"] == "skipped"

                answers = [await admin.get("/admin/jobs", params={"limit": 500})]
                for status in tuple(Status):
                    answers.append(await admin.get("/admin/jobs", params={"status": status}))
                for job_id in ids.values():
                    answers.append(await admin.get(f"/admin/jobs/{job_id}"))
                    answers.append(await admin.post(f"/admin/jobs/{job_id}/rerun"))
                answers.append(await admin.client.get("/admin"))
    blob = "\n".join(r.text for r in answers)
    assert "attempts" in blob and "?REDACTED" in blob
    assert any(a["http_status"] == 403 for a in finals["bad_sig"]["attempts"])
    assert finals["dead_host"]["error"]
    for secret in [SECRET, TOKEN, *tokens.values(), *signatures]:
        assert secret not in blob, f"{secret[:12]}… leaked into an admin answer"
