"""The SQLite backend's ingest process: deliveries committed by a child, answered only once committed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fulfiller.intake.admission import Delivery, NotAnObject
from fulfiller.store import StoreUnavailable
from fulfiller.store.ingest_wire import Frames, frame, from_wire, to_wire
from fulfiller.store.sqlite import SQLiteStore
from store.builders import REQUESTED, request_body
from support.ingest_child import stopped_child


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def delivery(event_id: str, code: str = "HRT-1") -> Delivery:
    return Delivery(event_id, REQUESTED, json.dumps(request_body(code)).encode(), time.time())


def stored_events(store: SQLiteStore) -> set[str]:
    conn = sqlite3.connect(store.path)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


def child_pid(store: SQLiteStore) -> int:
    proc = store.ingester.process
    assert proc is not None and proc.poll() is None
    return proc.pid


# --- the wire -----------------------------------------------------------------------------


def test_messages_split_anywhere_come_out_whole_and_in_order() -> None:
    sent = [(1, "evt-a", REQUESTED, b'{"a": 1}', 1.5), (2, "evt-b", "other.topic", b"\x00\xff" * 300, 2.0), [(3, True)]]
    stream = b"".join(frame(m) for m in sent)
    for cut in (1, 3, 4, 5, 17, len(stream) - 1):
        frames = Frames()
        got = frames.feed(stream[:cut]) + frames.feed(stream[cut:])
        assert got == sent, cut
    frames = Frames()
    assert [m for i in range(len(stream)) for m in frames.feed(stream[i:i + 1])] == sent  # a byte at a time


def test_a_delivery_crosses_the_wire_unchanged() -> None:
    d = delivery("evt-w")
    assert from_wire(to_wire(7, d)) == (7, d)


# --- the process ------------------------------------------------------------------------------


async def test_deliveries_are_committed_by_a_child_process(store: SQLiteStore) -> None:
    results = await asyncio.gather(*(store.ingest(delivery(f"evt-{i}", f"HRT-{i}")) for i in range(50)))
    assert results == [True] * 50
    assert child_pid(store) != os.getpid()
    assert await store.ingest(delivery("evt-7")) is False  # a duplicate id
    with pytest.raises(NotAnObject):
        await store.ingest(Delivery("evt-bad", REQUESTED, b"[]", time.time()))
    assert stored_events(store) == {f"evt-{i}" for i in range(50)}
    assert len(await store.list_jobs(limit=100)) == 50


async def test_the_child_ignores_interrupts_meant_for_the_server(store: SQLiteStore) -> None:
    """Ctrl-C reaches the whole process group, and SIGTERM may too: the server still needs the child
    to answer its in-flight deliveries while it shuts down, so the child ends only when its input does."""
    assert await store.ingest(delivery("evt-1")) is True
    status = Path(f"/proc/{child_pid(store)}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    for sig in (signal.SIGINT, signal.SIGTERM):
        assert ignored & (1 << (sig - 1)), sig.name


async def test_a_dead_child_fails_its_deliveries_retryably_and_is_replaced(store: SQLiteStore) -> None:
    assert await store.ingest(delivery("evt-before")) is True
    store.ingester.restart_after_s = 0.0
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # the child's commit waits on this lock
    try:
        pending = asyncio.ensure_future(store.ingest(delivery("evt-in-flight")))
        await asyncio.sleep(0)  # one turn of the loop: the delivery is written to the child
        os.kill(child_pid(store), signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match="ingest process exited"):
            await asyncio.wait_for(pending, 10)  # failed when the child's end of the pipe closes, not left hanging
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert stored_events(store) == {"evt-before"}  # refused, so the sender retries it
    assert await store.ingest(delivery("evt-in-flight")) is True  # the retry, to a new child
    assert stored_events(store) == {"evt-before", "evt-in-flight"}


async def test_a_child_dying_again_at_once_is_not_restarted_in_a_loop(store: SQLiteStore) -> None:
    assert await store.ingest(delivery("evt-1")) is True
    first = child_pid(store)
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(store.ingest(delivery("evt-2")), 10)
    with pytest.raises(StoreUnavailable, match="restarting"):
        await store.ping()  # not ready until a new child may start
    store.ingester.restart_after_s = 0.0
    await store.ping()
    assert child_pid(store) != first


async def test_close_answers_what_the_child_holds_then_it_exits(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    assert await store.ingest(delivery("evt-0")) is True
    proc = store.ingester.process
    assert proc is not None
    pending = [asyncio.ensure_future(store.ingest(delivery(f"evt-{i}", f"HRT-{i}"))) for i in range(1, 40)]
    await asyncio.sleep(0)  # all written to the child before it is told to stop
    await store.close()
    assert [await p for p in pending] == [True] * 39
    assert proc.poll() == 0
    assert stored_events(store) == {f"evt-{i}" for i in range(40)}
    with pytest.raises(StoreUnavailable):
        await store.ingest(delivery("evt-late"))


async def test_a_caller_on_another_event_loop_is_served_by_the_writer_thread(store: SQLiteStore) -> None:
    assert await store.ingest(delivery("evt-main")) is True

    def elsewhere() -> bool:
        return asyncio.run(store.ingest(delivery("evt-thread", "HRT-T")))

    assert await asyncio.to_thread(elsewhere) is True
    assert stored_events(store) == {"evt-main", "evt-thread"}


# --- a child that hangs -------------------------------------------------------------------------

DEADLINE_S = 1.0  # the test's ingest deadline (the product's is a few seconds under Outpost's patience)


@pytest.fixture
async def impatient(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """A store whose ingest child must answer within DEADLINE_S, and may be restarted at once."""
    s = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}", ingest_deadline_s=DEADLINE_S)
    s.ingester.restart_after_s = 0.0
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_a_hung_child_is_answered_503_within_the_deadline_then_replaced(impatient: SQLiteStore) -> None:
    acked = {f"evt-before-{i}" for i in range(3)}
    assert await asyncio.gather(*(impatient.ingest(delivery(e, e)) for e in sorted(acked))) == [True] * 3
    with stopped_child(impatient) as hung:
        started = time.monotonic()
        pending = [asyncio.ensure_future(impatient.ingest(delivery(f"evt-during-{i}", f"D-{i}"))) for i in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 30)
        waited = time.monotonic() - started
        assert [type(r) for r in results] == [StoreUnavailable] * 5, results
        assert "did not commit within" in str(results[0])
        assert waited < DEADLINE_S + 5, waited
        assert await asyncio.to_thread(hung.wait, 10) == -signal.SIGKILL  # the hung child is gone, not left behind

    # The senders retry: a fresh child takes them, and nothing acked before was lost.
    retried = await asyncio.gather(*(impatient.ingest(delivery(f"evt-during-{i}", f"D-{i}")) for i in range(5)))
    assert retried == [True] * 5
    assert child_pid(impatient) != hung.pid
    assert stored_events(impatient) == acked | {f"evt-during-{i}" for i in range(5)}


async def test_ping_is_not_ready_while_the_child_hangs(impatient: SQLiteStore) -> None:
    await impatient.ping()
    with stopped_child(impatient) as hung:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="did not commit within"):
            await asyncio.wait_for(impatient.ping(), 30)  # idle, yet hung: the next delivery would wait for nothing
        assert time.monotonic() - started < DEADLINE_S + 5
        assert await asyncio.to_thread(hung.wait, 10) == -signal.SIGKILL
    await impatient.ping()  # ready again, on a new child
    assert child_pid(impatient) != hung.pid
    assert await impatient.ingest(delivery("evt-after")) is True
