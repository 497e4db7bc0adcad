"""Retention (``Store.prune``) on SQLite and a real PostgreSQL, with a clock the test controls: the events and
jobs are stored at real times, and each prune is told what time it is (weeks later).

What goes: finished jobs last changed before the cutoff, with their attempts and events, and other topics'
old events. What stays: queued and running jobs however old, and whatever is younger. An event id still
stored is a duplicate when delivered again; once pruned, it is a new event.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
import pytest

from fulfiller.jobs import Attempt, Status
from fulfiller.store import Store, open_store
from fulfiller.store.retention import OLD_EVENTS, OLD_JOBS, PRUNE_LOCK
from store.builders import FULFILLED, PROJECT, REQUESTED, event, ingest_job, lifecycle_body, requested
from support.postgres import reset_schema

DAY = 86400.0
KEEP = 30 * DAY
OTHER = "video.something_new"


def invalid(event_id: str, now: float | None = None) -> Any:
    """A request stored ``invalid`` (a finished job: no worker ever runs it)."""
    return event(event_id, REQUESTED, {"projectId": PROJECT, "creative": {}}, now)


async def rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    found = await store.read(lambda cur: cur.execute(sql).fetchall())  # type: ignore[attr-defined]
    return [tuple(r) for r in found]


async def event_ids(store: Store) -> set[str]:
    return {r[0] for r in await rows(store, "SELECT event_id FROM events")}


async def test_old_finished_jobs_go_with_their_events_and_attempts_while_queued_and_running_stay(
        store: Store) -> None:
    t = time.time()
    done = await ingest_job(store, "evt-done", code="DONE")
    claimed = await store.claim("worker-a", 3600)
    assert claimed is not None and claimed.id == done.id
    await store.add_attempt(done.id, Attempt("upload", t, 12.0, 200))
    assert await store.finish(done.id, "worker-a", Status.COMPLETED, {})
    running = await ingest_job(store, "evt-running", code="RUN")
    assert (await store.claim("worker-b", 3600)).id == running.id  # type: ignore[union-attr]
    await store.add_attempt(running.id, Attempt("upload", t, 5.0, None))
    queued = await ingest_job(store, "evt-queued", code="QUEUED")
    assert await store.ingest_event(invalid("evt-invalid"))
    closed = await ingest_job(store, "evt-closed", code="CLOSED")
    assert await store.ingest_event(event("evt-closed-lc", FULFILLED, lifecycle_body(key=closed.storage_key)))
    assert await store.ingest_event(event("evt-other", OTHER, {"a": 1}))
    # Three weeks later: a job closed then, and an event of another topic.
    later = t + 21 * DAY
    recent = await ingest_job(store, "evt-recent", now=later, code="RECENT")
    assert await store.ingest_event(event("evt-recent-lc", FULFILLED, lifecycle_body(key=recent.storage_key), later))
    assert await store.ingest_event(event("evt-other-recent", OTHER, {"a": 2}, later))

    pruned = await store.prune(KEEP, now=t + 40 * DAY)

    assert pruned is not None and (pruned.jobs, pruned.events) == (3, 5)
    assert {j.id for j in await store.list_jobs()} == {running.id, queued.id, recent.id}
    assert (await store.get_job(recent.id)).status == Status.FULFILLED  # type: ignore[union-attr]
    assert await store.get_job(done.id) is None
    assert await rows(store, "SELECT job_id FROM attempts") == [(running.id,)]
    assert await event_ids(store) == {"evt-running", "evt-queued", "evt-recent", "evt-recent-lc", "evt-other-recent"}
    # Running and queued jobs stay however old they grow; the rest goes once old enough.
    again = await store.prune(KEEP, now=t + 100 * DAY)
    assert again is not None and (again.jobs, again.events) == (1, 3)
    assert {j.id for j in await store.list_jobs()} == {running.id, queued.id}


async def test_a_redelivery_inside_the_window_is_a_duplicate_and_one_after_pruning_is_new(store: Store) -> None:
    t = time.time()
    old_callback = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_old/complete"
    kept_callback = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_kept/complete"
    old = await ingest_job(store, "evt-old", code="OLD", callback=old_callback)
    assert await store.ingest_event(event("evt-old-lc", FULFILLED, lifecycle_body(key=old.storage_key)))
    assert await store.ingest_event(event("evt-old-other", OTHER, {"a": 1}))
    later = t + 25 * DAY
    kept = await ingest_job(store, "evt-kept", now=later, code="KEPT", callback=kept_callback)
    assert await store.ingest_event(event("evt-kept-lc", FULFILLED, lifecycle_body(key=kept.storage_key), later))
    assert await store.ingest_event(event("evt-kept-other", OTHER, {"a": 2}, later))
    now = t + 40 * DAY  # 15 days after the kept ones, 40 after the old ones

    pruned = await store.prune(KEEP, now=now)
    assert pruned is not None and (pruned.jobs, pruned.events) == (1, 3)

    # Inside the window: duplicates, by event id or by wait token, and nothing changes.
    assert await store.ingest_event(requested("evt-kept", now, code="KEPT")) is False
    assert await store.ingest_event(requested("evt-kept-again", now, code="KEPT", callback=kept_callback)) is False
    assert await store.ingest_event(event("evt-kept-lc", FULFILLED, lifecycle_body(key=kept.storage_key), now)) \
        is False
    assert await store.ingest_event(event("evt-kept-other", OTHER, {"a": 2}, now)) is False
    assert [j.id for j in await store.list_jobs()] == [kept.id]
    # Pruned: the same ids are new events, and a request with the pruned job's wait token is a new job.
    assert await store.ingest_event(event("evt-old-other", OTHER, {"a": 1}, now)) is True
    assert await store.ingest_event(requested("evt-old", now, code="OLD", callback=old_callback)) is True
    jobs = {j.event_id: j for j in await store.list_jobs()}
    assert set(jobs) == {"evt-kept", "evt-old"}
    assert jobs["evt-old"].id != old.id and jobs["evt-old"].status == Status.QUEUED


async def test_pruning_deletes_in_small_transactions_and_a_dry_run_deletes_nothing(store: Store) -> None:
    t = time.time()
    await asyncio.gather(*(store.ingest_event(invalid(f"evt-{n}")) for n in range(1200)))
    await asyncio.gather(*(store.ingest_event(event(f"evt-other-{n}", OTHER, {"n": n})) for n in range(30)))
    now = t + 40 * DAY

    dry = await store.prune(KEEP, now=now, batch=500, dry_run=True)
    assert dry is not None and (dry.jobs, dry.events, dry.batches) == (1200, 1230, 0)
    assert dry.state_bytes is not None and dry.state_bytes > 0
    assert await rows(store, "SELECT count(*) FROM jobs") == [(1200,)]

    pruned = await store.prune(KEEP, now=now, batch=500)
    # 500 + 500 + 200 jobs (each with its event), then the 30 other events: four transactions.
    assert pruned is not None and (pruned.jobs, pruned.events, pruned.batches) == (1200, 1230, 4)
    assert await rows(store, "SELECT count(*) FROM jobs") == [(0,)]
    assert await rows(store, "SELECT count(*) FROM events") == [(0,)]
    again = await store.prune(KEEP, now=now, batch=500)
    assert again is not None and (again.jobs, again.events, again.batches) == (0, 0, 0)


async def test_what_retention_deletes_is_found_through_indexes(store: Store) -> None:
    """Its queries use an index (jobs by creation, other topics' events by the partial index whose condition
    they repeat): a scan of every row would hold SQLite's write lock for as long as it reads."""
    await ingest_job(store, "evt-req")
    await store.ingest_event(event("evt-other", OTHER, {"a": 1}))
    queries = {"jobs_created": f"SELECT id {OLD_JOBS} LIMIT 500", "events_jobless_received": f"SELECT 1 {OLD_EVENTS}"}
    for index, query in queries.items():
        sql = query.replace("?", "1")
        if store.dialect.name == "sqlite":  # type: ignore[attr-defined]
            plan = json.dumps(await rows(store, f"EXPLAIN QUERY PLAN {sql}"))
        else:
            def explain(cur: Any, sql: str = sql) -> Any:
                cur.execute("SET enable_seqscan = off")  # tables this small would be read whole anyway
                try:
                    return cur.execute(f"EXPLAIN {sql}").fetchall()
                finally:
                    cur.execute("RESET enable_seqscan")

            plan = json.dumps(await store.read(explain))  # type: ignore[attr-defined]
        assert index in plan, plan


async def test_only_one_pruner_runs_at_a_time_on_postgresql(pg_database: str) -> None:
    reset_schema(pg_database)
    first, second = open_store(pg_database), open_store(pg_database)
    await first.open()
    await second.open()
    holder = psycopg.connect(pg_database, autocommit=True)
    try:
        for n in range(3):
            job = await ingest_job(first, f"evt-{n}", code=f"P-{n}")
            assert await first.claim("w", 60) is not None
            await first.add_attempt(job.id, Attempt("upload", time.time(), 1.0, 200))
            assert await first.finish(job.id, "w", Status.COMPLETED, {})
        now = time.time() + 40 * DAY
        # The first pruner takes its turn, then waits inside its first transaction for the attempts table.
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        running = asyncio.create_task(first.prune(KEEP, now=now))
        deadline = time.monotonic() + 10
        while not holder.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s::oid"
                                 " AND granted", (PRUNE_LOCK,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the first pruner never took its turn"
            await asyncio.sleep(0.02)

        assert await second.prune(KEEP, now=now) is None  # skips its round: another process is pruning
        holder.execute("COMMIT")
        pruned = await running
        assert pruned is not None and (pruned.jobs, pruned.events) == (3, 3)
        assert await first.list_jobs() == []
        after = await second.prune(KEEP, now=now)  # the turn is free again
        assert after is not None and (after.jobs, after.events) == (0, 0)
    finally:
        holder.close()
        await first.close()
        await second.close()


async def test_a_cancelled_prune_stops_after_its_transaction(store: Store) -> None:
    """A serving process that stops cancels its prune: the transaction in flight commits, no other begins,
    and what is left goes in the next round."""
    now = time.time() + 40 * DAY
    await asyncio.gather(*(store.ingest_event(invalid(f"evt-{n}")) for n in range(1000)))
    task = asyncio.create_task(store.prune(KEEP, now=now, batch=1))
    deadline = time.monotonic() + 10
    while await rows(store, "SELECT count(*) FROM jobs") == [(1000,)]:
        assert time.monotonic() < deadline, "the prune deleted nothing"
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # returns once the transaction in flight has ended
    after = await rows(store, "SELECT count(*) FROM jobs")
    assert 0 < after[0][0] < 1000
    assert await rows(store, "SELECT count(*) FROM jobs") == after  # nothing goes on deleting behind it
    rest = await store.prune(KEEP, now=now)
    assert rest is not None and rest.jobs == after[0][0]
