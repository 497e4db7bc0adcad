"""The Store contract, run against SQLite and a real PostgreSQL (see conftest's ``store_url``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from fulfiller.intake.admission import Delivery, NotAnObject
from fulfiller.jobs import Attempt, Status
from fulfiller.store import Store, StoreUnavailable, sql
from fulfiller.store.base import Lease, Requeue, UnreadableJob
from fulfiller.store.schema import migrations
from fulfiller.store.sqlite import SQLITE
from store.builders import (
    FULFILLED,
    PROJECT,
    REJECTED,
    REQUESTED,
    TIMEOUT,
    event,
    ingest_job,
    lifecycle_body,
    request_body,
    requested,
    status_of,
)
from support.odd_jobs import NESTED, ODD_ROWS, job_row

# -- intake ------------------------------------------------------------------------------


async def test_ingest_new_then_duplicate(store: Store) -> None:
    ev = requested("evt-1")
    assert await store.ingest_event(ev) is True
    again = requested("evt-1", code="HRT-OTHER")  # same id, other body: a redelivery, nothing new
    assert await store.ingest_event(again) is False
    listed = await store.list_jobs()
    assert [j.id for j in listed] == [ev.job.id]  # type: ignore[union-attr]
    job = await store.get_job(ev.job.id)  # type: ignore[union-attr]
    assert job is not None
    assert (job.status, job.event_id, job.code, job.variation, job.locale) == ("queued", "evt-1", "HRT-1", 2, "en")
    assert job.payload == request_body() | {"fulfillment": job.payload["fulfillment"]}
    assert job.storage_key == f"fb-external/{PROJECT}/HRT-1/v2/en/9x16.video"
    assert job.request_kind == "oss" and job.chosen_aspect == "9x16"


async def test_accept_parses_plans_and_stores_a_verified_delivery(store: Store) -> None:
    """The receiver's entry: raw bytes in, one event and its job stored (SQLite does this in its ingest process)."""
    body = json.dumps(request_body("HRT-ACC")).encode()
    assert await store.ingest(Delivery("evt-acc", REQUESTED, body, time.time())) is True
    assert await store.ingest(Delivery("evt-acc", REQUESTED, body, time.time())) is False
    invalid = json.dumps({"projectId": PROJECT, "creative": {}}).encode()
    assert await store.ingest(Delivery("evt-inv", REQUESTED, invalid, time.time())) is True
    assert await store.ingest(Delivery("evt-other", "other.topic", b'{"a": 1}', time.time())) is True
    for bad in (b"[1, 2]", b"not json", b'{"a": NaN}', "{}".encode("utf-16")):
        with pytest.raises(NotAnObject):
            await store.ingest(Delivery("evt-bad", REQUESTED, bad, time.time()))
    by_event = {j.event_id: j for j in await store.list_jobs()}
    assert set(by_event) == {"evt-acc", "evt-inv"}
    assert by_event["evt-acc"].status == Status.QUEUED and by_event["evt-acc"].code == "HRT-ACC"
    assert by_event["evt-acc"].payload == json.loads(body)
    assert by_event["evt-inv"].status == Status.INVALID and "invalid payload" in (by_event["evt-inv"].error or "")


async def test_a_body_is_stored_once(store: Store) -> None:
    """A request's body is its job's payload; the event row keeps the body only of events without a job."""
    request, other = requested("evt-req"), event("evt-other", "other.topic", {"a": 1})
    assert await store.ingest_event(request) and await store.ingest_event(other)
    rows = await store.read(  # type: ignore[attr-defined]
        lambda cur: cur.execute("SELECT e.event_id, e.body, j.payload FROM events e"
                                " LEFT JOIN jobs j ON j.event_id = e.event_id ORDER BY e.event_id").fetchall())
    assert [tuple(r) for r in rows] == [("evt-other", other.body, None), ("evt-req", "", request.body)]


async def test_events_without_job_are_stored_once(store: Store) -> None:
    other = event("evt-x", "something.else", {"hello": "world"})
    assert other.job is None and other.note
    assert await store.ingest_event(other) is True
    assert await store.ingest_event(other) is False
    assert await store.list_jobs() == []


async def test_invalid_payload_is_stored_as_invalid_job(store: Store) -> None:
    body = request_body()
    del body["creative"]["kind"]
    ev = event("evt-bad", REQUESTED, body)
    assert await store.ingest_event(ev) is True
    job = await store.get_job(ev.job.id)  # type: ignore[union-attr]
    assert job is not None and job.status == Status.INVALID and "creative.kind" in (job.error or "")
    assert await store.claim("w", 60) is None  # never runnable


async def test_failing_job_insert_stores_no_event(store: Store) -> None:
    first = await ingest_job(store, "evt-1")
    clash = requested("evt-2", code="HRT-2")
    assert clash.job is not None
    clash = replace(clash, job=replace(clash.job, id=first.id))  # the job insert will violate the primary key
    with pytest.raises(StoreUnavailable):
        await store.ingest_event(clash)
    # The event was rolled back with its job: the same delivery, retried, is new.
    fixed = requested("evt-2", code="HRT-2")
    assert await store.ingest_event(fixed) is True
    assert sorted(j.event_id for j in await store.list_jobs()) == ["evt-1", "evt-2"]


async def test_a_failing_write_spoils_no_neighbour(store: Store) -> None:
    first = await ingest_job(store, "evt-0")
    bad = requested("evt-bad")
    bad = replace(bad, job=replace(bad.job, id=first.id))  # type: ignore[arg-type]
    goods = [requested(f"evt-{i}", code=f"HRT-{i}") for i in range(1, 30)]
    # Submitted together, they share group commits with the failing one.
    results = await asyncio.gather(*(store.ingest_event(e) for e in [*goods[:15], bad, *goods[15:]]),
                                   return_exceptions=True)
    assert isinstance(results[15], StoreUnavailable)
    assert [r for i, r in enumerate(results) if i != 15] == [True] * len(goods)
    assert len(await store.list_jobs(limit=100)) == 1 + len(goods)


async def test_a_write_that_raises_spoils_no_neighbour(store: Store) -> None:
    def broken(cur: Any) -> None:
        cur.execute("UPDATE jobs SET error = 'half done'")
        raise RuntimeError("a bug in one write")

    goods = [requested(f"evt-{i}", code=f"HRT-{i}") for i in range(10)]
    results = await asyncio.gather(*(store.ingest_event(e) for e in goods[:5]),
                                   store.writer.submit(broken),  # type: ignore[attr-defined]
                                   *(store.ingest_event(e) for e in goods[5:]), return_exceptions=True)
    assert isinstance(results[5], RuntimeError)
    assert results[:5] + results[6:] == [True] * 10
    listed = await store.list_jobs()
    assert len(listed) == 10 and {j.error for j in listed} == {None}


async def test_ingests_sharing_a_commit_come_out_as_one_at_a_time(store: Store) -> None:
    # SQLite stores a batch's new events with multi-row statements: duplicates (stored before, or twice
    # in the batch), an early lifecycle event, invalid and unknown events must come out as they do alone.
    key = f"fb-external/{PROJECT}/HRT-50/v1/en/9x16.video"
    assert await store.ingest_event(event("evt-early", TIMEOUT, lifecycle_body(key=key))) is True
    old = await ingest_job(store, "evt-old", code="HRT-OLD")
    broken = request_body(code="HRT-BAD")
    del broken["creative"]["kind"]
    news = [requested(f"evt-b{i}", code=f"HRT-B{i}") for i in range(20)]
    late = requested("evt-late", code="HRT-50", variation=1, key=key)
    invalid = event("evt-bad", REQUESTED, broken)
    batch = [*news, requested("evt-old", code="HRT-OLD"), requested("evt-b3", code="HRT-OTHER"), late, invalid,
             event("evt-other", "something.else", {"hello": "world"})]
    results = await asyncio.gather(*(store.ingest_event(e) for e in batch))
    assert results == [True] * 20 + [False, False, True, True, True]
    listed = {j.event_id: j for j in await store.list_jobs(limit=100)}
    assert len(listed) == 1 + 20 + 2 and listed["evt-old"].id == old.id
    assert listed["evt-b3"].code == "HRT-B3"  # the first of the two
    assert listed["evt-b7"].payload == news[7].job.payload  # type: ignore[union-attr]
    assert listed["evt-late"].status == Status.TIMED_OUT
    assert listed["evt-bad"].status == Status.INVALID


# -- lifecycle events ----------------------------------------------------------------------


async def test_lifecycle_matches_by_storage_key(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    other = await ingest_job(store, "evt-2", code="HRT-2")
    assert job.storage_key
    done = event("evt-f", FULFILLED, lifecycle_body(key=job.storage_key))
    assert await store.ingest_event(done) is True
    assert await status_of(store, job.id) == Status.FULFILLED
    assert await status_of(store, other.id) == Status.QUEUED


async def test_lifecycle_closes_a_running_job_and_its_lease(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    claimed = await store.claim("w1", 60)
    assert claimed is not None and claimed.id == job.id
    rejected = event("evt-r", REJECTED, lifecycle_body(key=job.storage_key, reason="wrong_aspect"))
    assert await store.ingest_event(rejected) is True
    stored = await store.get_job(job.id)
    assert stored is not None
    assert (stored.status, stored.lifecycle_reason, stored.lease_owner) == (Status.REJECTED, "wrong_aspect", None)
    assert await store.renew(job.id, "w1", 60) == Lease.LOST  # the worker learns it is no longer its job
    assert await store.finish(job.id, "w1", Status.COMPLETED, {}) is False
    assert await status_of(store, job.id) == Status.REJECTED


async def test_lifecycle_by_coordinates_prefers_the_aspect_named(store: Store) -> None:
    # A hybrid creative: an OSS story_reel job and (newer) an AFS feed job on the same coordinates.
    t0 = time.time()
    story = await ingest_job(store, "evt-story", t0, aspect="9x16")
    feed = await ingest_job(store, "evt-feed", t0 + 1, aspect=None, family="feed")
    # The feed job's worker picked 4x5.
    claimed = await store.claim("w", 60)
    claimed2 = await store.claim("w", 60)
    assert {claimed.id, claimed2.id} == {story.id, feed.id}  # type: ignore[union-attr]
    assert await store.update(feed.id, "w", {"chosen_aspect": "4x5"}) is True

    assert await store.ingest_event(event("evt-f1", FULFILLED, lifecycle_body(aspect="9x16"))) is True
    assert await status_of(store, story.id) == Status.FULFILLED
    assert await status_of(store, feed.id) == Status.RUNNING

    assert await store.ingest_event(event("evt-f2", REJECTED, lifecycle_body(aspect="4x5", reason="corrupt"))) is True
    assert await status_of(store, feed.id) == Status.REJECTED


async def test_lifecycle_by_coordinates_without_aspect_takes_the_newest(store: Store) -> None:
    t0 = time.time()
    old = await ingest_job(store, "evt-old", t0, aspect="9x16")
    new = await ingest_job(store, "evt-new", t0 + 1, aspect=None, family="feed")
    assert await store.ingest_event(event("evt-t", TIMEOUT, lifecycle_body())) is True
    assert await status_of(store, new.id) == Status.TIMED_OUT
    assert await status_of(store, old.id) == Status.QUEUED


async def test_unmatched_lifecycle_is_kept_and_applied_when_its_job_arrives(store: Store) -> None:
    key = f"fb-external/{PROJECT}/HRT-9/v1/en/9x16.video"
    # Deliveries cross: the timeout arrives before the request it closes.
    assert await store.ingest_event(event("evt-t", TIMEOUT, lifecycle_body(key=key))) is True
    assert await store.ingest_event(event("evt-r", REJECTED, lifecycle_body(code="HRT-7", variation=1))) is True
    unrelated = await ingest_job(store, "evt-u", code="HRT-8", variation=1)
    assert await status_of(store, unrelated.id) == Status.QUEUED
    by_key = await ingest_job(store, "evt-req", code="HRT-9", variation=1, key=key)
    assert await status_of(store, by_key.id) == Status.TIMED_OUT
    by_coords = await ingest_job(store, "evt-req2", code="HRT-7", variation=1)
    assert await status_of(store, by_coords.id) == Status.REJECTED
    assert await store.claim("w", 60) is not None  # only the unrelated job is runnable
    assert await store.claim("w", 60) is None


# -- claims and leases --------------------------------------------------------------------------


async def test_claim_takes_the_oldest_runnable_job(store: Store) -> None:
    t0 = time.time() - 10
    made = [await ingest_job(store, f"evt-{i}", t0 + i, code=f"HRT-{i}") for i in (2, 0, 1)]
    order = []
    while (job := await store.claim("w", 60)) is not None:
        order.append(job.event_id)
        assert (job.status, job.lease_owner, job.runs) == (Status.RUNNING, "w", 1)
        assert job.lease_until is not None and job.lease_until > time.time() + 50
    assert order == ["evt-0", "evt-1", "evt-2"]
    assert len(made) == 3


async def test_lease_expiry_lets_another_worker_take_the_job(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    first = await store.claim("w1", 0.0)  # a lease that lapses at once
    assert first is not None and first.id == job.id
    second = None
    deadline = time.monotonic() + 5
    while second is None and time.monotonic() < deadline:  # the clock must move past lease_until
        second = await store.claim("w2", 60)
    assert second is not None and second.id == job.id
    assert (second.lease_owner, second.runs) == ("w2", 2)
    # w1 lost it: it can no longer renew, record, release or finish.
    assert await store.renew(job.id, "w1", 60) == Lease.LOST
    assert await store.update(job.id, "w1", {"error": "late"}) is False
    assert await store.release(job.id, "w1") is False
    assert await store.finish(job.id, "w1", Status.COMPLETED, {}) is False
    assert await store.claim("w3", 60) is None
    # w2 holds it.
    assert await store.renew(job.id, "w2", 60) == Lease.HELD
    assert await store.finish(job.id, "w2", Status.COMPLETED, {"content_hash": "sha256:00"}) is True
    done = await store.get_job(job.id)
    assert done is not None
    assert (done.status, done.lease_owner, done.lease_until, done.content_hash, done.error) == (
        Status.COMPLETED, None, None, "sha256:00", None)


async def test_renew_extends_the_lease(store: Store) -> None:
    await ingest_job(store, "evt-1")
    job = await store.claim("w", 5)
    assert job is not None and job.lease_until is not None
    assert await store.renew(job.id, "w", 120) == Lease.HELD
    renewed = await store.get_job(job.id)
    assert renewed is not None and renewed.lease_until is not None
    assert renewed.lease_until > job.lease_until + 100


async def test_update_and_finish_only_by_the_owner(store: Store) -> None:
    await ingest_job(store, "evt-1")
    job = await store.claim("owner", 60)
    assert job is not None
    assert await store.update(job.id, "intruder", {"bytes": 1}) is False
    assert await store.update(job.id, "owner", {"bytes": 42, "extension": "mp4", "content_type": "video/mp4"})
    with pytest.raises(ValueError):
        await store.update(job.id, "owner", {"status": "completed"})
    with pytest.raises(ValueError):
        await store.update(job.id, "owner", {"lease_owner": "intruder"})
    assert await store.finish(job.id, "intruder", Status.COMPLETED, {}) is False
    assert await store.finish(job.id, "owner", Status.FAILED, {"error": "403 from upload"}) is True
    assert await store.update(job.id, "owner", {"bytes": 7}) is False  # closed: no longer held
    final = await store.get_job(job.id)
    assert final is not None
    assert (final.status, final.bytes, final.extension, final.error) == (Status.FAILED, 42, "mp4", "403 from upload")


async def test_attempts_are_kept_in_order(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    t = time.time()
    await store.add_attempt(job.id, Attempt("resolve", t, 1.5, None, None, "local:a.mp4"))
    await store.add_attempt(job.id, Attempt("upload", t + 1, 20.0, 503, "upload answered 503"))
    await store.add_attempt(job.id, Attempt("upload", t + 2, 30.0, 200))
    loaded = await store.get_job(job.id)
    assert loaded is not None
    assert [(a.step, a.http_status) for a in loaded.attempts] == [("resolve", None), ("upload", 503), ("upload", 200)]
    assert loaded.attempts[1].error == "upload answered 503"
    assert loaded.attempts[0].detail == "local:a.mp4"
    assert await store.get_job("job_missing") is None


async def test_release_gives_the_job_back(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    assert (await store.claim("w", 60)).id == job.id  # type: ignore[union-attr]
    assert await store.release(job.id, "other") is False
    assert await store.release(job.id, "w", retry_in=3600) is True
    released = await store.get_job(job.id)
    assert released is not None and (released.status, released.lease_owner) == (Status.QUEUED, None)
    assert await store.claim("w", 60) is None  # not before its time
    assert await store.requeue(job.id) == Requeue.QUEUED  # an operator's rerun clears not_before
    again = await store.claim("w2", 60)
    assert again is not None and (again.id, again.runs) == (job.id, 2)
    assert await store.release(job.id, "w2") is True
    assert (await store.claim("w3", 60)).id == job.id  # type: ignore[union-attr]


async def test_a_job_released_to_retry_waits_in_the_queue_until_due(store: Store) -> None:
    waiting = await ingest_job(store, "evt-wait", time.time() - 20, code="HRT-WAIT")
    fresh = await ingest_job(store, "evt-fresh", time.time() - 10, code="HRT-FRESH")
    assert (await store.claim("w", 60)).id == waiting.id  # type: ignore[union-attr]
    assert await store.release(waiting.id, "w", retry_in=3600) is True
    released = await store.get_job(waiting.id)
    assert released is not None and (released.status, released.retries, released.lease_owner) == (
        Status.QUEUED, 1, None)
    shown = released.to_json()
    assert shown["status"] == "queued" and shown["next_try_at"] is not None
    assert 3500 < released.not_before - time.time() < 3700
    # Not due: the other job is the one claimed, and the queue's age counts only the due one.
    stats = await store.stats()
    assert stats.by_status["queued"] == 2
    assert stats.oldest_queued_at == pytest.approx(fresh.created_at)
    assert (await store.claim("w", 60)).id == fresh.id  # type: ignore[union-attr]
    assert await store.claim("w", 60) is None
    assert (await store.stats()).oldest_queued_at is None
    # A wait of nothing is due at once, and its retries keep counting (the backoff grows with them).
    assert await store.requeue(fresh.id) == Requeue.IS_RUNNING
    assert await store.release(fresh.id, "w", retry_in=0) is True
    again = await store.claim("w2", 60)
    assert again is not None and (again.id, again.retries) == (fresh.id, 1)
    assert again.to_json()["next_try_at"] is None


async def test_a_rerun_makes_a_waiting_job_due_and_starts_it_over(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    assert (await store.claim("w", 60)).id == job.id  # type: ignore[union-attr]
    assert await store.update(job.id, "w", {"callback_body": '{"skip": true, "reason": "x"}',
                                            "callback_unanswered": True})
    assert await store.release(job.id, "w", retry_in=3600) is True
    assert await store.requeue(job.id) == Requeue.QUEUED
    again = await store.claim("w", 60)
    assert again is not None and again.id == job.id
    # Started over (it resolves and uploads again); what the platform may have seen is kept.
    assert (again.retries, again.callback_body, again.callback_unanswered) == (0, None, True)


async def test_a_skip_of_a_running_job_reaches_its_worker_at_renewal(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    assert (await store.claim("w", 60)).id == job.id  # type: ignore[union-attr]
    assert await store.renew(job.id, "w", 60) == Lease.HELD
    assert await store.requeue(job.id, skip_reason="operator: wrong master") == Requeue.QUEUED
    running = await store.get_job(job.id)
    assert running is not None and (running.status, running.lease_owner, running.skip_requested) == (
        Status.RUNNING, "w", "operator: wrong master")
    assert await store.renew(job.id, "w", 60) == Lease.SKIP_REQUESTED
    assert await store.renew(job.id, "intruder", 60) == Lease.LOST
    assert await store.requeue(job.id) == Requeue.IS_RUNNING  # a rerun of a running job stays refused
    # The worker stops its try and gives the job back: due at once, the skip to send.
    assert await store.release(job.id, "w") is True
    taken = await store.claim("w2", 60)
    assert taken is not None and (taken.id, taken.skip_requested) == (job.id, "operator: wrong master")
    assert await store.finish(job.id, "w2", Status.SKIPPED, {"skip_reason": "operator: wrong master"})
    assert await store.requeue(job.id, skip_reason="again") == Requeue.ALREADY_CLOSED


async def test_leases_run_on_the_store_clock_not_the_host_clock(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    job = await ingest_job(store, "evt-1")
    real = time.time
    # A worker on a host whose clock is an hour behind: its lease must not look lapsed to everyone else.
    monkeypatch.setattr(sql.time, "time", lambda: real() - 3600)
    assert (await store.claim("slow-clock", 60)).id == job.id  # type: ignore[union-attr]
    assert await store.renew(job.id, "slow-clock", 60) == Lease.HELD
    monkeypatch.setattr(sql.time, "time", real)
    assert await store.claim("other", 60) is None
    held = await store.get_job(job.id)
    assert held is not None and held.lease_until is not None and 30 < held.lease_until - real() < 90
    # The same for a wait between tries: due by the store's clock.
    monkeypatch.setattr(sql.time, "time", lambda: real() + 3600)
    assert await store.release(job.id, "slow-clock", retry_in=3600) is True
    monkeypatch.setattr(sql.time, "time", real)
    assert await store.claim("other", 60) is None


# -- jobs that take workers down, and odd rows (see support.odd_jobs) -------------------------------------


async def _insert_job(store: Store, **columns: Any) -> str:
    """A job row as given (the rest as a fresh queued job's), under an event of its own; its id."""
    event_id = f"evt-{uuid.uuid4().hex}"
    assert await store.ingest_event(event(event_id, "other.topic", {}))
    job_id, sql, values = job_row(event_id, **columns)
    await store.writer.submit(lambda cur: store.dialect.execute(cur, sql, values))  # type: ignore[attr-defined]
    return job_id


async def _claim_after_lapse(store: Store, owner: str, lease_s: float) -> Any:
    """A claim, repeated until the clock has moved past a lease taken with ``lease_s=0``."""
    deadline = time.monotonic() + 5
    while (job := await store.claim(owner, lease_s)) is None and time.monotonic() < deadline:
        pass
    return job


async def test_a_job_whose_worker_went_away_three_times_ends_failed(store: Store) -> None:
    t0 = time.time() - 10
    job_id = await _insert_job(store, created_at=t0)
    for crashes, owner in enumerate(("w1", "w2", "w3")):
        # Each worker takes it with a lease that lapses at once, as a worker that dies holding it leaves it.
        taken = await _claim_after_lapse(store, owner, 0.0)
        assert (taken.id, taken.runs, taken.crashes) == (job_id, crashes + 1, crashes)
    other = await _insert_job(store, created_at=t0 + 1)
    # The third lapse is its third crash: it ends failed, and the claim hands out the next job instead.
    taken = await _claim_after_lapse(store, "w4", 60)
    assert taken is not None and taken.id == other and taken.crashes == 0
    failed = await store.get_job(job_id)
    assert failed is not None
    assert (failed.status, failed.error, failed.crashes, failed.runs, failed.lease_owner, failed.lease_until) == (
        Status.FAILED, "crashed 3 times", 3, 3, None, None)
    assert await store.claim("w5", 60) is None
    assert await store.renew(job_id, "w3", 60) == Lease.LOST


async def test_a_job_given_back_or_finished_counts_no_crash(store: Store) -> None:
    job_id = await _insert_job(store)
    for owner in ("w1", "w2", "w3", "w4"):
        taken = await store.claim(owner, 60)
        assert taken is not None and taken.id == job_id
        assert await store.release(job_id, owner)  # shutdown: back to the queue, no lease left to lapse
    taken = await store.claim("w5", 60)
    assert taken is not None and (taken.runs, taken.crashes) == (5, 0)


async def test_a_claimed_job_that_cannot_be_loaded_is_named_and_stays_held(store: Store) -> None:
    t0 = time.time() - 10
    poisoned = {await _insert_job(store, created_at=t0, payload=NESTED): RecursionError,
                await _insert_job(store, created_at=t0 + 1, payload="{not json"): json.JSONDecodeError}
    healthy = await _insert_job(store, created_at=t0 + 2)
    for job_id, error in poisoned.items():
        with pytest.raises(UnreadableJob) as caught:
            await store.claim("w", 60)
        assert caught.value.job_id == job_id and isinstance(caught.value.cause, error)
        # The claim stands: the job is the claimer's to end, in a write of its own.
        assert await store.finish(job_id, "w", Status.FAILED, {"error": "internal error"}) is True
    taken = await store.claim("w", 60)
    assert taken is not None and taken.id == healthy
    # People still read them: the payload that does not decode is shown as none.
    listed = {j.id: j for j in await store.list_jobs()}
    for job_id in poisoned:
        assert listed[job_id].payload is None and listed[job_id].status == Status.FAILED
        loaded = await store.get_job(job_id)
        assert loaded is not None and loaded.payload is None


async def test_every_odd_row_lists_reads_and_renders(store: Store) -> None:
    ids = {await _insert_job(store, **row): name for name, row in ODD_ROWS.items()}
    listed = await store.list_jobs(limit=100)
    assert {j.id for j in listed} == set(ids)
    for job in [*listed, *[await store.get_job(job_id) for job_id in ids]]:
        assert job is not None
        rendered = job.to_json(with_payload=True)
        # What the admin API and the CLI do with it: plain UTF-8 JSON, no NaN.
        json.dumps(rendered, ensure_ascii=False, allow_nan=False).encode()
    shown = {ids[j.id]: j.to_json(with_payload=True) for j in listed}
    assert shown["expires after year 9999"]["expires_at"] == "9999-12-31T23:59:59.999Z"
    assert shown["expires at infinity"]["expires_at"] == "9999-12-31T23:59:59.999Z"
    assert shown["lone surrogates"]["creative"] == {"code": "\ufffdHRT", "\ufffdkey": 1}
    assert shown["creative not an object"]["creative"] == "HRT-1"
    assert shown["code a number"]["creative"] == {"code": 1212, "variation": "inf"}
    assert shown["payload not an object"]["event"] == [1, 2, 3]
    assert shown["payload not JSON"]["event"] is None
    assert shown["payload NaN"]["creative"] == {"code": "nan"}
    assert shown["payload nested too deep"]["event"] is None
    assert "…" in json.dumps(shown["payload nested just under the limit"]["event"], ensure_ascii=False)


async def test_requeue_outcomes(store: Store) -> None:
    assert await store.requeue("job_nope") == Requeue.NOT_FOUND

    running = await ingest_job(store, "evt-run", code="HRT-RUN")
    assert (await store.claim("w", 60)).id == running.id  # type: ignore[union-attr]
    assert await store.requeue(running.id) == Requeue.IS_RUNNING

    body = request_body(code="HRT-BAD")
    del body["fulfillment"]["storageKey"]
    invalid = event("evt-invalid", REQUESTED, body)
    assert await store.ingest_event(invalid) is True
    assert await store.requeue(invalid.job.id) == Requeue.NOT_RERUNNABLE  # type: ignore[union-attr]

    late = await ingest_job(store, "evt-late", code="HRT-LATE", expires_in=-5)
    assert await store.finish(running.id, "w", Status.FAILED, {"error": "boom", "skip_reason": "x"}) is True
    assert (await store.claim("w", 60)).id == late.id  # type: ignore[union-attr]
    assert await store.finish(late.id, "w", Status.EXPIRED, {}) is True
    assert await store.requeue(late.id) == Requeue.PAST_DEADLINE

    assert await store.requeue(running.id, skip_reason="operator: no master") == Requeue.QUEUED
    again = await store.get_job(running.id)
    assert again is not None
    assert (again.status, again.error, again.skip_reason, again.skip_requested) == (
        Status.QUEUED, None, None, "operator: no master")
    claimed = await store.claim("w2", 60)
    assert claimed is not None and claimed.id == running.id and claimed.skip_requested == "operator: no master"


# -- reads ----------------------------------------------------------------------------------


async def test_list_jobs_filters_and_pages(store: Store) -> None:
    t0 = time.time() - 100
    codes = ["HRT-100", "hrt-101", "ABC-1", "HRT-102", "ABC-2", "XYZ-50%", "HRT-103"]
    made = [await ingest_job(store, f"evt-{i}", t0 + i, code=c) for i, c in enumerate(codes)]
    newest_first = [j.id for j in reversed(made)]
    assert [j.id for j in await store.list_jobs()] == newest_first
    pages = [await store.list_jobs(limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert [[j.id for j in p] for p in pages] == [newest_first[:3], newest_first[3:6], newest_first[6:], []]
    assert {j.code for j in await store.list_jobs(code="hrt-10")} == {"HRT-100", "hrt-101", "HRT-102", "HRT-103"}
    assert [j.code for j in await store.list_jobs(code="50%")] == ["XYZ-50%"]
    assert await store.list_jobs(code="nothing") == []
    # Status filter: claim the two oldest (HRT-100, hrt-101) and finish one.
    a = await store.claim("w", 60)
    b = await store.claim("w", 60)
    assert a is not None and b is not None
    assert await store.finish(a.id, "w", Status.COMPLETED, {}) is True
    assert [j.id for j in await store.list_jobs(status="completed")] == [a.id]
    assert [j.id for j in await store.list_jobs(status="running")] == [b.id]
    assert len(await store.list_jobs(status="queued")) == 5
    assert [j.code for j in await store.list_jobs(status="queued", code="abc")] == ["ABC-2", "ABC-1"]
    assert await store.list_jobs(status="running", code="abc") == []


async def test_stats(store: Store) -> None:
    empty = await store.stats()
    assert empty.by_status == {} and empty.oldest_queued_at is None
    t0 = time.time() - 50
    for i in range(4):
        await ingest_job(store, f"evt-{i}", t0 + i, code=f"HRT-{i}")
    body = request_body(code="HRT-INV")
    body["creative"]["variation"] = -1
    assert await store.ingest_event(event("evt-inv", REQUESTED, body, t0 - 100)) is True
    job = await store.claim("w", 60)
    assert job is not None
    assert await store.finish(job.id, "w", Status.COMPLETED, {}) is True
    await store.claim("w", 60)
    stats = await store.stats()
    assert stats.by_status == {"queued": 2, "running": 1, "completed": 1, "invalid": 1}
    assert stats.oldest_queued_at == pytest.approx(t0 + 2)


# -- schema, concurrency, availability ---------------------------------------------------------


async def test_migrations_are_idempotent(make_store: Any, store_url: str) -> None:
    first = await make_store()
    job = await ingest_job(first, "evt-1")
    await first.close()
    for _ in range(2):
        again = await make_store()
        loaded = await again.get_job(job.id)
        assert loaded is not None and loaded.event_id == "evt-1"
        assert await again.ingest_event(requested("evt-1")) is False
        versions = await again.read(  # type: ignore[attr-defined]
            lambda cur: cur.execute("SELECT count(*), max(version) FROM fulfiller_schema").fetchone())
        latest = len(migrations(SQLITE))
        assert tuple(versions) == (latest, latest)  # each version applied once
        await again.close()


async def test_concurrent_claims_never_hand_one_job_to_two_owners(make_store: Any) -> None:
    # Several store instances (separate connections and writer threads: as several processes) share the state.
    stores = [await make_store() for _ in range(3)]
    n_jobs = 60
    await asyncio.gather(*(stores[i % 3].ingest_event(requested(f"evt-{i}", code=f"HRT-{i}")) for i in range(n_jobs)))
    claims: list[tuple[str, str]] = []

    async def claimer(store: Store, owner: str) -> None:
        while (job := await store.claim(owner, 300)) is not None:
            assert job.lease_owner == owner
            claims.append((job.id, owner))

    await asyncio.gather(*(claimer(stores[t % 3], f"owner-{t}") for t in range(30)))
    per_job = Counter(job_id for job_id, _ in claims)
    assert len(per_job) == n_jobs
    assert set(per_job.values()) == {1}
    listed = await stores[0].list_jobs(limit=1000)
    assert {j.id: j.lease_owner for j in listed} == {job_id: owner for job_id, owner in claims}


async def test_wait_for_work_returns_when_work_is_queued(store: Store) -> None:
    await store.wait_for_work(0.01)  # settle anything pending from open()
    waiter = asyncio.create_task(store.wait_for_work(60))
    await asyncio.sleep(0)  # let the waiter start waiting
    started = time.monotonic()
    await ingest_job(store, "evt-1")
    await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - started < 10


async def test_an_idle_worker_wakes_when_the_earliest_waiting_job_is_due(store: Store) -> None:
    job = await ingest_job(store, "evt-1")
    assert (await store.claim("w", 60)).id == job.id  # type: ignore[union-attr]
    assert await store.release(job.id, "w", retry_in=1.0) is True
    await store.wait_for_work(0.01)  # settle anything pending from the ingest
    listening = getattr(store, "listening", None)  # PostgreSQL: its listener wakes waiters once it is up
    if listening is not None:
        assert await asyncio.to_thread(listening.wait, 10)
        await store.wait_for_work(0.01)
    started = time.monotonic()
    await asyncio.wait_for(store.wait_for_work(60), 10)  # not woken by the release: by the job falling due
    waited = time.monotonic() - started
    assert 0.5 < waited < 5
    while (taken := await store.claim("w", 60)) is None:  # a timer may fire a hair early
        await store.wait_for_work(1)
    assert taken.id == job.id


def _fail_fast(url: str) -> str:
    """The store URL with a short lock wait (SQLite) or connect timeout (PostgreSQL)."""
    return url + ("?busy_timeout_ms=200" if url.startswith("sqlite") else "?connect_timeout=3")


async def test_ping_fails_when_the_database_is_unreachable(make_store: Any, store_url: str, outage: Any) -> None:
    store = await make_store(_fail_fast(store_url))
    await store.ping()
    job = await ingest_job(store, "evt-1")
    with outage():
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.ingest_event(requested("evt-2", code="HRT-2"))
    # Back: the next write reconnects, and nothing acknowledged was lost.
    await store.ping()
    assert await store.ingest_event(requested("evt-2", code="HRT-2")) is True
    assert {j.id for j in await store.list_jobs()} >= {job.id}
    assert len(await store.list_jobs()) == 2


# -- negative-acks for jobs found invalid at intake (worker.negative_ack_failures) ----------------


async def test_an_invalid_job_is_taken_once_for_its_negative_ack_and_stays_invalid(store: Store) -> None:
    # A deadline two days ahead is past what intake allows: invalid, though every field has its shape.
    invalid = await ingest_job(store, "evt-inv-ack", expires_in=2 * 86400)
    assert invalid.status == Status.INVALID
    assert await store.claim("w1", 60.0) is None  # without the setting, no worker takes it

    taken = await store.claim("w1", 60.0, negative_acks=True)

    assert taken is not None and taken.id == invalid.id
    assert (taken.status, taken.runs, taken.lease_owner) == (Status.INVALID, 1, "w1")
    assert await store.claim("w2", 60.0, negative_acks=True) is None  # once, whatever comes of it
    assert await store.finish(invalid.id, "w1", Status.INVALID, {"skip_reason": "failed:invalid payload"})
    done = await store.get_job(invalid.id)
    assert done is not None
    assert (done.status, done.skip_reason, done.lease_owner) == (Status.INVALID, "failed:invalid payload", None)


async def test_a_runnable_job_goes_before_a_negative_ack_and_a_past_deadline_is_never_taken(store: Store) -> None:
    # Received three days ago with a deadline a minute ago: invalid at intake (too far ahead), and now late.
    late = await ingest_job(store, "evt-inv-late", now=time.time() - 3 * 86400, expires_in=-60)
    assert late.status == Status.INVALID
    ready = await ingest_job(store, "evt-inv-ready", code="HRT-2", expires_in=2 * 86400)
    runnable = await ingest_job(store, "evt-ok", code="HRT-3")

    order = [await store.claim("w1", 60.0, negative_acks=True) for _ in range(3)]

    assert [job.id if job else None for job in order] == [runnable.id, ready.id, None]
