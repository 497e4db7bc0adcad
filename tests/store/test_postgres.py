"""What only the PostgreSQL backend promises: cross-process wake-ups, replicas starting
together, receivers racing on the same events, a database restart, and a URL password
that never shows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from fulfiller.jobs import Status
from fulfiller.store import StoreUnavailable, open_store
from fulfiller.store.postgres import POSTGRES, PostgresStore, redact_dsn
from fulfiller.store.schema import apply_migrations, migrations
from store.builders import REQUESTED, event, ingest_job, request_body, requested
from support.postgres import PgCluster, reset_schema

PASSWORD = "Sup3r-s3cret-pw"  # trust auth ignores it; it must never be shown


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    reset_schema(pg_database)
    return pg_database


@pytest.fixture
async def stores() -> AsyncIterator[list[PostgresStore]]:
    opened: list[PostgresStore] = []
    yield opened
    for store in reversed(opened):
        await store.close()


async def opened(stores: list[PostgresStore], url: str) -> PostgresStore:
    store = open_store(url)
    assert isinstance(store, PostgresStore)
    stores.append(store)
    await store.open()
    return store


async def listening(store: PostgresStore) -> None:
    """Start the store's listener and settle its start-up wake-up, so the next wake-up is a notification."""
    await store.wait_for_work(0.01)
    assert await asyncio.to_thread(store.listening.wait, 10), "the listener did not start"
    await store.wait_for_work(0.05)


async def woken(store: PostgresStore, action: Any, budget_s: float = 10.0) -> float:
    """Seconds until ``store.wait_for_work(60)`` returns after ``action`` (another process's write)."""
    waiter = asyncio.create_task(store.wait_for_work(60))
    await asyncio.sleep(0)
    started = time.monotonic()
    await action()
    await asyncio.wait_for(waiter, budget_s)
    return time.monotonic() - started


# -- LISTEN / NOTIFY ----------------------------------------------------------------------


async def test_queued_work_wakes_a_worker_in_another_process(pg_url: str, stores: list[PostgresStore]) -> None:
    worker = await opened(stores, pg_url)
    receiver = await opened(stores, pg_url)  # its own connections: as another process
    await listening(worker)

    # A new job wakes the waiting worker long before its 60 s poll.
    assert await woken(worker, lambda: ingest_job(receiver, "evt-1")) < 10
    job = await worker.claim("w", 60)
    assert job is not None

    # So does a release (shutdown, retry later) and an operator's rerun.
    await worker.wait_for_work(0.05)
    assert await woken(worker, lambda: receiver.release(job.id, "w")) < 10
    again = await worker.claim("w", 60)
    assert again is not None and await worker.finish(again.id, "w", Status.FAILED, {"error": "x"})
    await worker.wait_for_work(0.05)
    assert await woken(worker, lambda: receiver.requeue(again.id)) < 10


async def test_writes_that_queue_nothing_do_not_notify(pg_url: str, stores: list[PostgresStore]) -> None:
    store = await opened(stores, pg_url)
    other = await opened(stores, pg_url)
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN fulfiller_jobs")
        body = requested("evt-inv").job.payload  # type: ignore[union-attr]
        del body["creative"]["kind"]
        assert await other.ingest_event(event("evt-inv", "video.source_requested", body)) is True  # an invalid job
        assert await other.ingest_event(event("evt-x", "other.topic", {"a": 1})) is True
        assert list(listener.notifies(timeout=0.3)) == []
        await ingest_job(other, "evt-ok")
        notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in notes] == ["fulfiller_jobs"]
    assert store is not other


# -- replicas -------------------------------------------------------------------------------


async def test_replicas_starting_together_migrate_once(pg_cluster: PgCluster, stores: list[PostgresStore]) -> None:
    for _ in range(3):
        url = pg_cluster.create_database("fulfiller_migrate")
        try:
            replicas = [open_store(url) for _ in range(6)]
            stores.extend(replicas)  # type: ignore[arg-type]
            await asyncio.gather(*(s.open() for s in replicas))  # each migrates from its own thread
            with psycopg.connect(url) as conn:
                # Each version applied once, by one of them.
                assert conn.execute("SELECT count(*) FROM fulfiller_schema").fetchone() == (len(migrations(POSTGRES)),)
            await asyncio.gather(*(s.close() for s in replicas))
            stores.clear()
        finally:
            pg_cluster.drop_database(url)


async def test_receivers_racing_on_the_same_events_store_each_once(pg_url: str, stores: list[PostgresStore]) -> None:
    # Every event reaches two receivers (a retrying sender); they commit in groups, in opposite
    # orders: PostgreSQL breaks the resulting deadlocks, and the loser's batch runs again.
    a = await opened(stores, pg_url)
    b = await opened(stores, pg_url)
    events = [requested(f"evt-{i}", code=f"HRT-{i}") for i in range(300)]
    results = await asyncio.gather(
        asyncio.gather(*(a.ingest_event(e) for e in events), return_exceptions=True),
        asyncio.gather(*(b.ingest_event(e) for e in reversed(events)), return_exceptions=True),
    )
    from_a, from_b = results[0], list(reversed(results[1]))
    errors = [r for r in [*from_a, *from_b] if isinstance(r, BaseException)]
    assert errors == []
    assert all(x != y for x, y in zip(from_a, from_b, strict=True))  # exactly one of the two stored each event
    assert len(await a.list_jobs(limit=1000)) == 300


async def test_receivers_racing_on_one_wait_token_store_it_once(pg_url: str, stores: list[PostgresStore]) -> None:
    # Each request reaches two receivers under different event ids (the id header is not signed): the
    # wait token's unique index decides, and the second to commit answers "duplicate", never an error.
    a = await opened(stores, pg_url)
    b = await opened(stores, pg_url)
    bodies = [request_body(f"HRT-{i}") for i in range(200)]
    results = await asyncio.gather(
        asyncio.gather(*(a.ingest_event(event(f"evt-a-{i}", REQUESTED, body)) for i, body in enumerate(bodies)),
                       return_exceptions=True),
        asyncio.gather(*(b.ingest_event(event(f"evt-b-{i}", REQUESTED, bodies[i])) for i in reversed(range(200))),
                       return_exceptions=True),
    )
    from_a, from_b = results[0], list(reversed(results[1]))
    assert [r for r in [*from_a, *from_b] if isinstance(r, BaseException)] == []
    assert all(x != y for x, y in zip(from_a, from_b, strict=True))  # exactly one of the two stored each request
    listed = await a.list_jobs(limit=1000)
    assert len(listed) == 200
    stored = await a.read(lambda cur: cur.execute("SELECT count(*) FROM events").fetchone()[0])
    assert stored == 200  # the loser's event row went with its job


async def test_a_deadlocked_batch_is_run_again(pg_url: str, stores: list[PostgresStore],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fulfiller.store.postgres")
    store = await opened(stores, pg_url)
    first = await ingest_job(store, "evt-1", code="HRT-1")
    second = await ingest_job(store, "evt-2", code="HRT-2")
    other = await asyncio.to_thread(psycopg.connect, pg_url, autocommit=True)
    try:
        other.execute("SET deadlock_timeout = '30s'")  # so the store's session detects the cycle: it is the victim
        other.execute("BEGIN")
        other.execute("UPDATE jobs SET error = 'other' WHERE id = %s", (second.id,))

        def both(cur: Any) -> str:
            cur.execute("UPDATE jobs SET error = 'store' WHERE id = %s", (first.id,))
            cur.execute("UPDATE jobs SET error = 'store' WHERE id = %s", (second.id,))  # waits for `other`
            return "done"

        write = asyncio.create_task(store.writer.submit(both))
        deadline = time.monotonic() + 10
        waiting = ("SELECT count(*) FROM pg_stat_activity"
                   " WHERE datname = current_database() AND wait_event_type = 'Lock'")
        while other.execute(waiting).fetchone() != (1,):
            assert time.monotonic() < deadline, "the store never waited for the other transaction's lock"
            await asyncio.sleep(0.02)  # poll
        # Close the cycle; PostgreSQL aborts the store's transaction, and this update goes through.
        await asyncio.to_thread(other.execute, "UPDATE jobs SET error = 'other' WHERE id = %s", (first.id,))
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 30) == "done"  # the batch ran again, after `other` committed
    finally:
        other.close()
    assert [(await store.get_job(j.id)).error for j in (first, second)] == ["store", "store"]  # type: ignore[union-attr]
    assert "write batch rolled back (DeadlockDetected)" in caplog.text


# -- a database restart ------------------------------------------------------------------------


async def test_a_database_restart_is_survived(pg_private_cluster: PgCluster, stores: list[PostgresStore],
                                              caplog: pytest.LogCaptureFixture) -> None:
    cluster = pg_private_cluster
    url = cluster.create_database("fulfiller_restart")
    secret_url = cluster.url(url.rsplit("/", 1)[1], password=PASSWORD)
    worker = await opened(stores, secret_url)
    worker.read_timeout_s = 1
    receiver = await opened(stores, secret_url)
    receiver.read_timeout_s = 1
    await listening(worker)
    acked = [(await ingest_job(receiver, f"evt-{i}", code=f"HRT-{i}")).id for i in range(5)]
    assert len(await worker.list_jobs()) == 5  # the readers' pool holds a connection now

    caplog.set_level(logging.DEBUG)
    cluster.stop("immediate")  # a crash: no checkpoint, recovery on start
    try:
        errors = []
        for call in (receiver.ping, lambda: receiver.ingest_event(requested("evt-down")), worker.list_jobs,
                     lambda: worker.claim("w", 60), worker.stats):
            with pytest.raises(StoreUnavailable) as info:
                await call()
            errors.append(str(info.value))
        deadline = time.monotonic() + 10
        while worker.listening.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # poll: the listener notices the lost connection on its own
        assert not worker.listening.is_set()
    finally:
        cluster.start()

    # The writer reconnects on its next batch; the pool lends no broken connection; the listener comes back.
    worker.read_timeout_s = receiver.read_timeout_s = 8  # longer than the pool's reconnection backoff
    await receiver.ping()
    assert len(await worker.list_jobs()) == 5
    assert await asyncio.to_thread(worker.listening.wait, 15)
    await worker.wait_for_work(0.05)
    assert await woken(worker, lambda: ingest_job(receiver, "evt-after")) < 10
    assert {j.id for j in await receiver.list_jobs()} >= set(acked)
    assert await receiver.ingest_event(requested("evt-down")) is True  # refused while down, so it was never stored

    shown = "\n".join(errors + [r.getMessage() for r in caplog.records] + [repr(worker)])
    assert PASSWORD not in shown
    for store in stores:
        await store.close()
    stores.clear()
    cluster.drop_database(url)


# -- the password in the URL ------------------------------------------------------------------


async def test_the_url_password_is_never_shown(pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    dead_port = _closed_port()
    url = f"postgresql://fulfiller:{PASSWORD}@127.0.0.1:{dead_port}/fulfiller?connect_timeout=2"
    store = open_store(url)
    assert PASSWORD not in repr(store) and "REDACTED" in repr(store)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert PASSWORD not in str(info.value) and "127.0.0.1" in str(info.value)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)
    assert redact_dsn(f"password={PASSWORD} host=x", PASSWORD) == "password=REDACTED host=x"
    assert redact_dsn(f"oops postgresql://u:{PASSWORD}@h/db") == "oops postgresql://u:REDACTED@h/db"
    assert PASSWORD not in redact_dsn(f"{PASSWORD} and {PASSWORD[:-2]}", PASSWORD)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_version_3_drops_the_unique_job_event_id_and_keeps_the_jobs(
    pg_url: str, stores: list[PostgresStore]
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the schema as version 2 left it, with a job
        assert apply_migrations(conn, POSTGRES, upto=2) == 2
        conn.execute("INSERT INTO events (event_id, topic, received_at, body) VALUES ('evt-1', 't', 0, '')")
        conn.execute("INSERT INTO jobs (id, event_id, status, payload, created_at, updated_at)"
                     " VALUES ('job_1', 'evt-1', 'queued', '{}', 0, 0)")
    store = await opened(stores, pg_url)
    job = await store.get_job("job_1")
    assert job is not None and job.event_id == "evt-1"
    with psycopg.connect(pg_url) as conn:
        uniques = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'jobs'::regclass"
                               " AND contype = 'u'").fetchall()
    assert uniques == []
