"""``Engine.run`` in-process: every status and retry path, in milliseconds per case.

The end-to-end suites (``test_engine_e2e``, ``test_engine_faults``) drive a whole
``fulfiller serve``; these drive ``Engine`` directly with a real SQLite store and
fakes for its peers: a catalog serving sample media from memory, an uploader that
answers what each case scripts, and the callback peer as an ``httpx.MockTransport``.

The fake catalog reaches the engine through a ``Catalogs`` subclass whose ``get``
returns it: ``Catalogs`` itself only builds catalogs from the config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Listing, Master
from fulfiller.config import Config, parse_config
from fulfiller.delivery.engine import Engine
from fulfiller.delivery.resolve import Catalogs
from fulfiller.delivery.transfer import ChecksumMismatch, Delivered, Refused, SizeMismatch
from fulfiller.jobs import Job, Status
from fulfiller.metrics import Metrics
from fulfiller.retry import Transient
from fulfiller.store import Store, open_store
from store.builders import ingest_job

MEDIA = Path(__file__).resolve().parents[1] / "media"
MP4 = (MEDIA / "9x16.mp4").read_bytes()
MP4_4X5 = (MEDIA / "4x5.mp4").read_bytes()
CATALOG = "mem"
OWNER = "test-worker"
# A guard against a hang, not a speed goal: each case is in-process with millisecond backoff.
CASE_TIMEOUT_S = 30.0


# -- fakes ---------------------------------------------------------------------------------------


class MemoryCatalog(Catalog):
    """Masters held in memory, keyed by their path (``HRT-1/v2/en/9x16.mp4``)."""

    def __init__(self, name: str, layout: str, files: dict[str, bytes]):
        super().__init__(name, layout)
        self.files = files
        self.asked: list[str] = []  # every folder listed
        self.streams = 0  # streams opened
        self.find_failures: list[Exception] = []  # raised by the next lookups, in turn
        self.stream_failures: list[Exception] = []  # raised by the next streams after their first chunk

    async def list_in(self, folders: list[str]) -> Listing:
        folder = "/".join(folders)
        self.asked.append(folder)
        if self.find_failures:
            raise self.find_failures.pop(0)
        return Listing(files=[Master(self.name, key, key.rsplit("/", 1)[-1], len(data), ref=key)
                              for key, data in sorted(self.files.items()) if key.rsplit("/", 1)[0] == folder])

    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        return self.files[master.ref][offset:offset + length]

    async def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        self.streams += 1
        data = self.files[master.ref]
        for offset in range(start, len(data), chunk_size):
            yield data[offset:offset + chunk_size]
            if self.stream_failures:
                raise self.stream_failures.pop(0)



class OneCatalog(Catalogs):
    """Catalogs that hands out the fake for the configured name instead of building one."""

    def __init__(self, config: Config, catalog: Catalog):
        super().__init__(config)
        self.catalog = catalog

    def get(self, name: str) -> Catalog:
        assert name == self.catalog.name
        return self.catalog


@dataclass
class Put:
    url: str
    size: int
    content_type: str
    expected_sha256: str | None
    body: bytes = b""


@dataclass
class FakeUploader:
    """Answers each ``put`` with the next scripted outcome: "ok", or an exception to raise after reading the body."""

    script: list[str | BaseException] = field(default_factory=lambda: ["ok"])
    puts: list[Put] = field(default_factory=list)

    async def put(self, url: str, chunks: AsyncGenerator[bytes, None], size: int, content_type: str,
                  expected_sha256: str | None = None) -> Delivered:
        put = Put(url, size, content_type, expected_sha256)
        self.puts.append(put)
        outcome = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        try:
            async for chunk in chunks:
                put.body += chunk
        finally:
            await chunks.aclose()
        if isinstance(outcome, BaseException):
            raise outcome
        return Delivered(len(put.body), hashlib.sha256(put.body).hexdigest(), 200)


@dataclass
class FakeCallbackPeer:
    """The platform's callback endpoint: answers the scripted statuses in turn (the last one repeats); an
    exception in the script is raised instead of answering, as httpx raises a timeout or a cut connection."""

    script: list[int | Exception] = field(default_factory=lambda: [200])
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((str(request.url), json.loads(request.content)))
        status = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(status, Exception):
            raise status
        return httpx.Response(status, text="" if status < 400 else f"scripted {status} for this token")

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.requests]


# -- harness -------------------------------------------------------------------------------------


def make_config(tmp_path: Path) -> Config:
    return parse_config(json.dumps({
        "state": f"sqlite:///{tmp_path / 'state.db'}",
        "receiver": {"secrets": ["whsec_engine-tests-secret-0123456789"]},
        "worker": {
            "allowed_upload_hosts": ["*.r2.cloudflarestorage.com"],
            "allowed_callback_hosts": ["api.trigger.dev"],
            "retry_base_s": 0.001,
            "retry_max_s": 0.005,
            "chunk_bytes": 65_536,
        },
        # Only its name and layout matter: the engine gets the in-memory catalog under this name.
        "catalogs": {CATALOG: {"type": "local", "root": str(tmp_path / "unused")}},
        "routes": [{"codes": ["HRT-*"], "catalog": CATALOG}],
    }))


@dataclass
class Harness:
    config: Config
    store: Store
    catalog: MemoryCatalog
    uploader: FakeUploader
    peer: FakeCallbackPeer
    engine: Engine

    def configure(self, **worker: Any) -> None:
        """Change ``worker`` settings for the rest of the case."""
        self.config = self.config.model_copy(update={"worker": self.config.worker.model_copy(update=worker)})
        self.engine.config = self.config

    async def job(self, **kwargs: Any) -> Job:
        """Ingest a request (``store.builders.request_body`` arguments) and claim it as the worker would."""
        queued = await ingest_job(self.store, f"msg_{time.perf_counter_ns()}", **kwargs)
        claimed = await self.store.claim(OWNER, 60.0)
        assert claimed is not None and claimed.id == queued.id
        return claimed

    async def ends(self, status: Status) -> Job:
        """Run the usual request (HRT-1, 9x16) to its end, which must be ``status``; the job as stored."""
        ran, stored = await self.run(await self.job(code="HRT-1", aspect="9x16"))
        assert ran == status and stored.status == status
        return stored

    async def run(self, job: Job) -> tuple[str, Job]:
        """Run ``job`` to its end, as workers would: each time it goes back to the queue to try again, claim
        it once it is due and run it again. The status the last run returned and the job as stored."""
        status = await self.run_once(job)
        while status == Status.QUEUED:
            status = await self.run_once(await self.claim_when_due(job.id))
        return status, await self.stored(job.id)

    async def run_once(self, job: Job) -> str:
        """One run of a claimed job; what it returned (``queued`` when it waits to try again)."""
        return await asyncio.wait_for(self.engine.run(job, OWNER), CASE_TIMEOUT_S)

    async def claim_when_due(self, job_id: str) -> Job:
        """The job, claimed once its wait between tries is over (the store wakes us when it is due)."""
        async with asyncio.timeout(CASE_TIMEOUT_S):
            while (claimed := await self.store.claim(OWNER, 60.0)) is None:
                await self.store.wait_for_work(1.0)
        assert claimed.id == job_id
        return claimed

    async def stored(self, job_id: str) -> Job:
        stored = await self.store.get_job(job_id)
        assert stored is not None
        return stored


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    config = make_config(tmp_path)
    store = open_store(config.state)
    await store.open()
    catalog = MemoryCatalog(CATALOG, config.catalogs[CATALOG].layout, {"HRT-1/v2/en/9x16.mp4": MP4})
    uploader = FakeUploader()
    peer = FakeCallbackPeer()
    async with httpx.AsyncClient(transport=httpx.MockTransport(peer)) as client:
        engine = Engine(config, store, Metrics(), OneCatalog(config, catalog), client, uploader)
        yield Harness(config, store, catalog, uploader, peer, engine)
    await store.close()


def steps(job: Job, step: str | None = None) -> list[tuple[str, int | None]]:
    return [(a.step, a.http_status) for a in job.attempts if step is None or a.step == step]


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_nothing_sent(h: Harness) -> None:
    assert h.uploader.puts == []
    assert h.peer.requests == []


# -- completed -----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [200, 202])
async def test_oss_completes_with_the_hash_of_the_bytes(h: Harness, answer: int) -> None:
    h.peer.script = [answer]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED
    assert stored.status == Status.COMPLETED
    assert stored.error is None and stored.skip_reason is None
    assert stored.content_hash == sha256_of(MP4)
    assert stored.bytes == len(MP4)
    assert stored.chosen_aspect == "9x16"
    assert stored.extension == "mp4" and stored.content_type == "video/mp4"
    assert stored.source == f"{CATALOG}:HRT-1/v2/en/9x16.mp4"
    assert steps(stored) == [("resolve", None), ("upload", 200), ("callback", answer)]
    # The uploader got the whole master, sized and typed, at the request's URL.
    [put] = h.uploader.puts
    assert put.body == MP4 and put.size == len(MP4) and put.content_type == "video/mp4"
    assert put.url == job.payload["fulfillment"]["uploadUrl"]
    # One callback, to the request's wait token, with the positive ack (OSS: no aspectRatio).
    [(url, body)] = h.peer.requests
    assert url == job.payload["fulfillment"]["completeCallbackUrl"]
    assert body == {"storageKey": job.storage_key, "extension": "mp4", "contentHash": sha256_of(MP4)}


async def test_afs_completes_with_the_aspect_delivered(h: Harness) -> None:
    # Feed prefers 4x5, then 1x1, then 3x4: the catalog has 1x1 and 4x5, so 4x5 goes.
    h.catalog.files = {"HRT-1/v2/en/4x5.mp4": MP4_4X5, "HRT-1/v2/en/1x1.mp4": (MEDIA / "1x1.mp4").read_bytes()}
    job = await h.job(code="HRT-1", aspect=None, family="feed")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.status == Status.COMPLETED
    assert stored.chosen_aspect == "4x5"
    assert stored.content_hash == sha256_of(MP4_4X5)
    assert h.uploader.puts[0].body == MP4_4X5
    assert h.peer.bodies == [{"storageKey": job.storage_key, "aspectRatio": "4x5", "extension": "mp4",
                              "contentHash": sha256_of(MP4_4X5)}]


# -- skips ---------------------------------------------------------------------------------------


async def test_no_route_is_a_skip(h: Harness) -> None:
    job = await h.job(code="ZZZ-1", aspect="9x16")  # routes cover HRT-* only

    status, stored = await h.run(job)

    assert status == Status.SKIPPED and stored.status == Status.SKIPPED
    assert stored.skip_reason == "no_route" and stored.error is None
    assert stored.content_hash is None
    assert steps(stored) == [("resolve", None), ("callback", 200)]
    assert h.catalog.asked == []  # never looked
    assert h.uploader.puts == []
    assert h.peer.bodies == [{"skip": True, "reason": "no_route"}]


async def test_nothing_in_the_catalog_is_a_no_match_skip(h: Harness) -> None:
    h.catalog.files = {}
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.SKIPPED and stored.status == Status.SKIPPED
    assert stored.skip_reason == "no_match:aspect=9x16" and stored.error is None
    assert steps(stored) == [("resolve", None), ("callback", 200)]
    assert h.catalog.asked == ["HRT-1/v2/en"]
    assert h.uploader.puts == []
    assert h.peer.bodies == [{"skip": True, "reason": "no_match:aspect=9x16"}]


async def test_a_master_of_the_wrong_kind_is_passed_over(h: Harness) -> None:
    h.catalog.files = {"HRT-1/v2/en/9x16.mp4": (MEDIA / "9x16.jpg").read_bytes()}  # an image saved as .mp4
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.SKIPPED and stored.skip_reason == "no_match:aspect=9x16"
    assert "image/jpeg, not a video: passed over" in (stored.attempts[0].detail or "")
    assert h.uploader.puts == []
    assert h.peer.bodies == [{"skip": True, "reason": "no_match:aspect=9x16"}]


async def test_an_operator_skip_sends_the_skip_body_and_nothing_else(h: Harness) -> None:
    queued = await ingest_job(h.store, "msg_skip", code="HRT-1", aspect="9x16")
    assert await h.store.requeue(queued.id, skip_reason="manual:operator") == "queued"
    job = await h.store.claim(OWNER, 60.0)
    assert job is not None and job.skip_requested == "manual:operator"

    status, stored = await h.run(job)

    assert status == Status.SKIPPED and stored.status == Status.SKIPPED
    assert stored.skip_reason == "manual:operator" and stored.error is None
    assert steps(stored) == [("callback", 200)]  # no resolve, no upload
    assert h.catalog.asked == [] and h.uploader.puts == []
    assert h.peer.bodies == [{"skip": True, "reason": "manual:operator"}]


# -- the callback's final answers ----------------------------------------------------------------


async def test_callback_409_is_superseded(h: Harness) -> None:
    h.peer.script = [409]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.SUPERSEDED and stored.status == Status.SUPERSEDED
    assert "409" in (stored.error or "") and "completed elsewhere" in (stored.error or "")
    assert stored.content_hash == sha256_of(MP4)  # the bytes went; the token was answered by someone else
    assert steps(stored) == [("resolve", None), ("upload", 200), ("callback", 409)]
    assert len(h.uploader.puts) == 1 and len(h.peer.requests) == 1


async def test_skip_callback_409_is_superseded_and_keeps_the_skip_reason(h: Harness) -> None:
    h.catalog.files = {}
    h.peer.script = [409]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.SUPERSEDED and stored.status == Status.SUPERSEDED
    assert stored.skip_reason == "no_match:aspect=9x16"
    assert h.peer.bodies == [{"skip": True, "reason": "no_match:aspect=9x16"}]


async def test_callback_410_is_expired(h: Harness) -> None:
    h.peer.script = [410]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.EXPIRED and stored.status == Status.EXPIRED
    assert stored.error == "callback answered 410: the request expired"
    assert steps(stored, "callback") == [("callback", 410)]
    assert len(h.peer.requests) == 1


async def test_callback_400_fails_keeping_the_answer(h: Harness) -> None:
    h.peer.script = [400]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.FAILED and stored.status == Status.FAILED
    assert stored.error == "callback answered 400: scripted 400 for this token"
    assert steps(stored, "callback") == [("callback", 400)]
    assert stored.attempts[-1].error == stored.error
    assert len(h.peer.requests) == 1  # a 400 is not retried


async def test_callback_500_then_200_completes_after_two_tries(h: Harness) -> None:
    h.peer.script = [500, 200]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.status == Status.COMPLETED
    assert stored.error is None
    assert steps(stored, "callback") == [("callback", 500), ("callback", 200)]
    assert stored.attempts[-2].error == "callback answered 500"
    # Both tries carry the same body; the bytes were uploaded once.
    assert len(h.peer.requests) == 2 and h.peer.bodies[0] == h.peer.bodies[1]
    assert len(h.uploader.puts) == 1
    assert h.engine.metrics.registry.get_sample_value("fulfiller_retries_total", {"step": "callback"}) == 1


async def test_a_callback_409_after_a_lost_answer_is_our_own_completion(h: Harness) -> None:
    # The first try timed out reading the answer: the platform may have completed the token then.
    h.peer.script = [httpx.ReadTimeout("no answer"), 409]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.status == Status.COMPLETED
    assert stored.error is None
    assert steps(stored, "callback") == [("callback", None), ("callback", 409)]
    assert len(h.peer.requests) == 2


async def test_a_callback_409_after_a_refused_connection_is_superseded(h: Harness) -> None:
    # A connection that never opened sent nothing: the 409 is someone else's completion.
    h.peer.script = [httpx.ConnectError("refused"), 409]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.SUPERSEDED and stored.status == Status.SUPERSEDED


async def test_a_callback_failing_until_the_deadline_expires_the_job(h: Harness) -> None:
    h.peer.script = [503]
    job = await h.job(code="HRT-1", aspect="9x16")
    # A deadline 0.2 s away (expiresAt itself has whole seconds only).
    deadline = time.time() + 0.2
    assert await h.store.update(job.id, OWNER, {"expires_at": deadline})

    status, stored = await h.run(dataclasses.replace(job, expires_at=deadline))

    assert status == Status.EXPIRED and stored.status == Status.EXPIRED
    # The last wait that fits ends just before the deadline: the run after it may find the deadline passed.
    assert stored.error in ("deadline reached while retrying callback: callback answered 503",
                            "deadline (expiresAt) passed before work started")
    assert len(h.peer.requests) >= 2
    assert {s for s in steps(stored, "callback")} == {("callback", 503)}


# -- the catalog's answers -----------------------------------------------------------------------


async def test_a_catalog_outage_is_retried_after_its_retry_after(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.catalog.find_failures = [CatalogUnavailable("429 rate limited", retry_after=0.05)]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.status == Status.COMPLETED
    assert steps(stored, "resolve") == [("resolve", None), ("resolve", None)]
    assert stored.attempts[0].error == "CatalogUnavailable: 429 rate limited"
    # The catalog's Retry-After (50 ms) wins over the configured backoff (at most 5 ms).
    [retry] = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert retry.getMessage() == "resolve: catalog unavailable: 429 rate limited; retrying in 0.05s"


async def test_a_catalog_refusal_fails_the_job_with_nothing_sent(h: Harness) -> None:
    h.catalog.find_failures = [CatalogError("downloadQuotaExceeded")]

    stored = await h.ends(Status.FAILED)

    assert stored.error == "catalog: downloadQuotaExceeded"
    assert steps(stored) == [("resolve", None)]  # not retried
    assert_nothing_sent(h)


async def test_a_catalog_cut_mid_stream_is_retried_from_the_first_byte(h: Harness) -> None:
    h.catalog.stream_failures = [CatalogUnavailable("connection reset")]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.status == Status.COMPLETED
    assert stored.content_hash == sha256_of(MP4)
    assert steps(stored, "upload") == [("upload", None), ("upload", 200)]
    assert stored.attempts[1].error == "CatalogUnavailable: connection reset"
    assert h.uploader.puts[-1].body == MP4 and h.catalog.streams == 2


# -- the upload's answers ------------------------------------------------------------------------


async def test_upload_403_fails_without_a_callback(h: Harness) -> None:
    h.uploader.script = [Refused("upload", 403, "SignatureDoesNotMatch")]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.FAILED and stored.status == Status.FAILED
    assert stored.error == "upload answered 403: SignatureDoesNotMatch (pre-signed URL expired or invalid)"
    assert stored.content_hash is None
    assert steps(stored) == [("resolve", None), ("upload", 403)]
    assert len(h.uploader.puts) == 1  # not retried
    assert h.peer.requests == []


async def test_upload_transient_then_success_completes_after_two_tries(h: Harness) -> None:
    h.uploader.script = [Transient("upload answered 503", http_status=503), "ok"]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.status == Status.COMPLETED
    assert steps(stored, "upload") == [("upload", 503), ("upload", 200)]
    assert stored.content_hash == sha256_of(MP4)
    # Each try streamed the master from its first byte: the retry opened a stream of its own.
    assert [p.body for p in h.uploader.puts] == [MP4, MP4]
    assert h.catalog.streams == 2
    assert len(h.peer.requests) == 1


@pytest.mark.parametrize("unreadable", [
    SizeMismatch("catalog gave 10 bytes more than its size"),
    ChecksumMismatch("SHA-256 of the bytes read differs from the catalog's"),
])
async def test_a_master_that_reads_wrong_fails_as_master_unreadable(h: Harness, unreadable: Exception) -> None:
    h.uploader.script = [unreadable]

    stored = await h.ends(Status.FAILED)

    assert stored.error == f"master unreadable: {unreadable}"
    assert steps(stored) == [("resolve", None), ("upload", None)]
    assert len(h.uploader.puts) == 1 and h.peer.requests == []  # not retried


async def test_an_unexpected_uploader_exception_fails_as_internal_error(h: Harness) -> None:
    h.uploader.script = [RuntimeError("boom")]

    stored = await h.ends(Status.FAILED)

    assert stored.error == "internal error: RuntimeError: boom"
    assert steps(stored) == [("resolve", None), ("upload", None)]
    assert stored.attempts[-1].error == "RuntimeError: boom"
    assert h.peer.requests == []


# -- ended before anything is sent ---------------------------------------------------------------


async def test_a_deadline_already_passed_expires_the_job_with_nothing_sent(h: Harness) -> None:
    job = await h.job(code="HRT-1", aspect="9x16")
    job = dataclasses.replace(job, expires_at=time.time() - 1)  # the hour ran out while it was queued

    status, stored = await h.run(job)

    assert status == Status.EXPIRED and stored.status == Status.EXPIRED
    assert stored.error == "deadline (expiresAt) passed before work started"
    assert stored.attempts == []
    assert h.catalog.asked == []
    assert_nothing_sent(h)


async def test_an_invalid_payload_ends_invalid_with_nothing_sent(h: Harness) -> None:
    job = await h.job(code="HRT-1", aspect="9x16")
    payload = json.loads(json.dumps(job.payload))
    del payload["fulfillment"]["uploadUrl"]
    job = dataclasses.replace(job, payload=payload)

    status, stored = await h.run(job)

    assert status == Status.INVALID and stored.status == Status.INVALID
    assert (stored.error or "").startswith("invalid payload: ")
    assert "uploadUrl" in (stored.error or "")
    assert stored.attempts == []
    assert_nothing_sent(h)


async def test_an_upload_host_outside_the_allow_list_fails_and_the_uploader_is_never_called(h: Harness) -> None:
    job = await h.job(code="HRT-1", aspect="9x16")
    payload = json.loads(json.dumps(job.payload))
    payload["fulfillment"]["uploadUrl"] = "https://evil.example.com/put?X-Amz-Signature=abc"
    job = dataclasses.replace(job, payload=payload)

    status, stored = await h.run(job)

    assert status == Status.FAILED and stored.status == Status.FAILED
    assert stored.error == "upload host evil.example.com:443 is not in the allow-list"
    assert steps(stored) == [("resolve", None)]  # resolved, then refused before any byte left
    assert_nothing_sent(h)


async def test_a_callback_host_outside_the_allow_list_fails_with_nothing_sent(h: Harness) -> None:
    job = await h.job(code="HRT-1", aspect="9x16", callback="https://evil.example.com/complete")

    status, stored = await h.run(job)

    assert status == Status.FAILED and stored.status == Status.FAILED
    assert "callback host evil.example.com" in (stored.error or "")
    assert stored.attempts == []
    assert h.catalog.asked == []
    assert_nothing_sent(h)


# -- retries wait in the queue -------------------------------------------------------------------


async def test_a_transient_failure_gives_the_job_back_to_wait_in_the_queue(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fulfiller")
    h.configure(retry_base_s=30.0, retry_max_s=30.0)
    h.uploader.script = [Transient("upload answered 503", http_status=503), "ok"]
    job = await h.job(code="HRT-1", aspect="9x16")

    assert await h.run_once(job) == Status.QUEUED

    stored = await h.stored(job.id)
    assert (stored.status, stored.lease_owner, stored.retries, stored.error) == (Status.QUEUED, None, 1, None)
    assert 0 < stored.not_before - time.time() <= 30
    assert stored.to_json()["next_try_at"] is not None
    assert steps(stored) == [("resolve", None), ("upload", 503)]
    assert await h.store.claim("other-worker", 60.0) is None  # not due: the slot is free for other jobs
    # One line for the retry (step, reason, wait), none for the try that failed.
    [retry] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert retry.getMessage().startswith("upload: upload answered 503; retrying in ")
    assert (retry.step, retry.reason, retry.http_status) == ("upload", "upload answered 503", 503)  # type: ignore[attr-defined]
    assert 0 < retry.wait_s <= 30  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.getMessage().startswith("upload failed")]
    assert h.engine.metrics.registry.get_sample_value("fulfiller_retries_total", {"step": "upload"}) == 1


async def test_the_backoff_grows_with_the_tries_the_job_stored(h: Harness) -> None:
    h.configure(retry_base_s=10.0, retry_max_s=10_000.0)
    h.uploader.script = [Transient("upload answered 503", http_status=503)]
    job = await h.job(code="HRT-1", aspect="9x16")
    # Six failed tries before this one: the window is 10 s * 2**6, no longer the first try's 10 s.
    await h.store.update(job.id, OWNER, {"retries": 6})
    job = dataclasses.replace(job, retries=6)

    waits = []
    for _ in range(5):
        assert await h.run_once(job) == Status.QUEUED
        stored = await h.stored(job.id)
        waits.append(stored.not_before - time.time())
        assert await h.store.requeue(job.id) == "queued"  # an operator's rerun: due now, the count starts over
        job = await h.store.claim(OWNER, 60.0)  # type: ignore[assignment]
        assert job is not None and job.retries == 0
        await h.store.update(job.id, OWNER, {"retries": 6})
        job = dataclasses.replace(job, retries=6)
    assert stored.retries == 7
    assert max(waits) > 10 and max(waits) <= 640


async def test_a_retried_upload_resolves_the_master_again(h: Harness) -> None:
    # The master is replaced between two tries: the retry delivers the new one, not the first try's object.
    h.uploader.script = [Transient("upload answered 503", http_status=503), "ok"]
    h.catalog.files = {"HRT-1/v2/en/9x16.mov": MP4}
    job = await h.job(code="HRT-1", aspect="9x16")
    assert await h.run_once(job) == Status.QUEUED
    replaced = MP4 + b"\0" * 1024
    h.catalog.files = {"HRT-1/v2/en/9x16.mp4": replaced}

    status, stored = await h.run(await h.claim_when_due(job.id))

    assert status == Status.COMPLETED
    assert steps(stored) == [("resolve", None), ("upload", 503), ("resolve", None), ("upload", 200),
                             ("callback", 200)]
    assert h.catalog.asked == ["HRT-1/v2/en", "HRT-1/v2/en"]
    assert stored.source == f"{CATALOG}:HRT-1/v2/en/9x16.mp4"
    assert h.uploader.puts[-1].body == replaced and stored.content_hash == sha256_of(replaced)
    assert h.peer.bodies == [{"storageKey": job.storage_key, "extension": "mp4", "contentHash": sha256_of(replaced)}]


async def test_a_callback_retried_after_the_upload_sends_the_same_body_without_uploading_again(h: Harness) -> None:
    h.peer.script = [503, 503, 200]
    h.catalog.files = {"HRT-1/v2/en/4x5.mp4": MP4_4X5}
    job = await h.job(code="HRT-1", aspect=None, family="feed")

    status, stored = await h.run(job)

    assert status == Status.COMPLETED and stored.runs == 3
    assert steps(stored) == [("resolve", None), ("upload", 200), ("callback", 503), ("callback", 503),
                             ("callback", 200)]
    assert len(h.uploader.puts) == 1 and h.catalog.asked == ["HRT-1/v2/en"]
    first = {"storageKey": job.storage_key, "aspectRatio": "4x5", "extension": "mp4",
             "contentHash": sha256_of(MP4_4X5)}
    assert h.peer.bodies == [first, first, first]


async def test_a_skip_whose_callback_is_retried_is_sent_again_as_it_was(h: Harness) -> None:
    h.catalog.files = {}
    h.peer.script = [502, 200]
    job = await h.job(code="HRT-1", aspect="9x16")
    assert await h.run_once(job) == Status.QUEUED
    h.catalog.files = {"HRT-1/v2/en/9x16.mp4": MP4}  # appears meanwhile: the skip chosen stands

    status, stored = await h.run(await h.claim_when_due(job.id))

    assert status == Status.SKIPPED and stored.skip_reason == "no_match:aspect=9x16"
    assert steps(stored) == [("resolve", None), ("callback", 502), ("callback", 200)]
    assert h.peer.bodies == [{"skip": True, "reason": "no_match:aspect=9x16"}] * 2
    assert h.uploader.puts == []


async def test_a_lost_callback_answer_is_remembered_across_runs(h: Harness) -> None:
    h.peer.script = [httpx.ReadTimeout("no answer"), 409]
    job = await h.job(code="HRT-1", aspect="9x16")
    assert await h.run_once(job) == Status.QUEUED
    assert (await h.stored(job.id)).callback_unanswered is True

    status, stored = await h.run(await h.claim_when_due(job.id))

    assert status == Status.COMPLETED and stored.error is None


# -- tries cut short -----------------------------------------------------------------------------


@dataclass
class HeldUploader(FakeUploader):
    """Takes the first chunk, then holds the upload open until the test cancels the run."""

    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def put(self, url: str, chunks: AsyncGenerator[bytes, None], size: int, content_type: str,
                  expected_sha256: str | None = None) -> Delivered:
        async for _ in chunks:
            self.started.set()
            await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_cancelled_try_is_recorded_as_cancelled_and_never_as_a_success(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fulfiller")
    uploader = HeldUploader()
    h.engine.uploader = uploader  # type: ignore[assignment]
    job = await h.job(code="HRT-1", aspect="9x16")
    run = asyncio.create_task(h.engine.run(job, OWNER))
    await asyncio.wait_for(uploader.started.wait(), CASE_TIMEOUT_S)

    run.cancel()
    await asyncio.wait([run])

    assert run.cancelled()
    stored = await h.stored(job.id)
    assert stored.status == Status.RUNNING  # not finished: its worker gives it back, or its lease lapses
    assert [(a.step, a.error) for a in stored.attempts] == [("resolve", None), ("upload", "cancelled")]
    assert not [r for r in caplog.records if r.getMessage().startswith(("upload ok", "job "))]
    assert h.peer.requests == []


async def test_a_cancelled_callback_counts_as_possibly_delivered(h: Harness) -> None:
    answered = asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        answered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with httpx.AsyncClient(transport=httpx.MockTransport(held)) as client:
        h.engine.client = client
        job = await h.job(code="HRT-1", aspect="9x16")
        run = asyncio.create_task(h.engine.run(job, OWNER))
        await asyncio.wait_for(answered.wait(), CASE_TIMEOUT_S)
        run.cancel()
        await asyncio.wait([run])
    stored = await h.stored(job.id)
    assert (stored.attempts[-1].step, stored.attempts[-1].error) == ("callback", "cancelled")
    assert stored.callback_unanswered is True
    assert stored.status == Status.RUNNING


# -- telling the platform about failures (worker.negative_ack_failures) --------------------------


async def test_a_failed_job_also_sends_a_negative_ack_when_configured(h: Harness) -> None:
    h.configure(negative_ack_failures=True)
    h.uploader.script = [Refused("upload", 403, "SignatureDoesNotMatch")]
    job = await h.job(code="HRT-1", aspect="9x16")

    status, stored = await h.run(job)

    error = "upload answered 403: SignatureDoesNotMatch (pre-signed URL expired or invalid)"
    assert status == Status.FAILED and stored.status == Status.FAILED
    assert stored.error == error and stored.skip_reason == f"failed:{error}"
    assert h.peer.bodies == [{"skip": True, "reason": f"failed:{error}"}]
    assert steps(stored) == [("resolve", None), ("upload", 403), ("callback", 200)]


async def test_an_invalid_upload_url_also_sends_a_negative_ack_when_configured(h: Harness) -> None:
    h.configure(negative_ack_failures=True)
    job = await h.job(code="HRT-1", aspect="9x16")
    payload = json.loads(json.dumps(job.payload))
    payload["fulfillment"]["uploadUrl"] = "https://evil.example.com/put?X-Amz-Signature=abc"
    job = dataclasses.replace(job, payload=payload)

    status, stored = await h.run(job)

    assert status == Status.FAILED
    assert h.uploader.puts == []
    assert h.peer.bodies == [{"skip": True, "reason": "failed:upload host evil.example.com:443 is not in the allow-list"}]


@pytest.mark.parametrize("callback", ["https://evil.example.com/complete", "http://api.trigger.dev/complete"])
async def test_no_negative_ack_goes_to_a_callback_url_that_may_not_be_used(h: Harness, callback: str) -> None:
    h.configure(negative_ack_failures=True)
    job = await h.job(code="HRT-1", aspect="9x16", callback=callback)

    status, stored = await h.run(job)

    assert status in (Status.FAILED, Status.INVALID) and stored.skip_reason is None
    assert_nothing_sent(h)


async def test_a_job_invalid_at_intake_gets_its_negative_ack_and_nothing_else(h: Harness) -> None:
    h.configure(negative_ack_failures=True)
    # Every field has its shape, but a deadline two days ahead is past what intake allows.
    invalid = await ingest_job(h.store, "msg_invalid", code="HRT-1", aspect="9x16", expires_in=2 * 86400)
    assert invalid.status == Status.INVALID and invalid.error
    taken = await h.store.claim(OWNER, 60.0, negative_acks=True)
    assert taken is not None and taken.id == invalid.id

    status, stored = await h.run(taken)

    assert status == Status.INVALID and stored.status == Status.INVALID
    assert stored.error == invalid.error and stored.skip_reason == f"failed:{invalid.error}"
    assert h.peer.bodies == [{"skip": True, "reason": f"failed:{invalid.error}"}]
    assert steps(stored) == [("callback", 200)]
    assert h.catalog.asked == [] and h.uploader.puts == []  # never worked on as a request


async def test_without_the_setting_a_failed_job_sends_nothing(h: Harness) -> None:
    h.uploader.script = [Refused("upload", 403, "SignatureDoesNotMatch")]
    stored = await h.ends(Status.FAILED)
    assert stored.skip_reason is None and h.peer.requests == []


# -- the outcome's log line ----------------------------------------------------------------------


async def test_one_line_per_outcome_says_what_was_delivered(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fulfiller")
    await h.ends(Status.COMPLETED)
    h.uploader.script = [Refused("upload", 403, "SignatureDoesNotMatch")]
    await h.ends(Status.FAILED)

    done, failed = [r for r in caplog.records if r.getMessage().startswith("job ")]
    assert (done.getMessage(), done.levelname, failed.getMessage(), failed.levelname) == (
        "job completed", "INFO", "job failed", "WARNING")
    for line in (done, failed):
        assert (line.code, line.catalog, line.object, line.bytes, line.content_type) == (  # type: ignore[attr-defined]
            "HRT-1", CATALOG, "HRT-1/v2/en/9x16.mp4", len(MP4), "video/mp4")
        assert line.duration_ms >= 0  # type: ignore[attr-defined]
    assert failed.reason.startswith("upload answered 403")  # type: ignore[attr-defined]
