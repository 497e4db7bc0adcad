"""Retention: deleting what ``retention.keep_days`` no longer keeps, in small transactions beside intake.

What goes (``Store.prune``): finished jobs (every status but ``queued`` and ``running``) whose ``updated_at``
(when they finished, or were last changed) is before the cutoff, with their attempts and the event that made
each; and the events of every other topic (lifecycle events, unknown topics: ``schema.JOBLESS_EVENTS``)
received before it. A lifecycle event goes by its own age: it is never younger than the job it closed.

Each transaction deletes at most ``batch`` jobs (with their attempts and events) or ``batch`` events, and
finds them through an index (jobs by ``created_at``: a job finishes after it is created; events through
``events_jobless_received``), so intake, which needs the same write lock on SQLite, waits at most one small
transaction behind it. The run has a connection of its own: the store's writer goes on meanwhile.

Foreign keys: attempts first, then jobs, then their events. Deleting an event makes the database look for a
job that references it: PostgreSQL through the index ``jobs_event``; SQLite has no such index (every new
job would write it), so the pruning connection turns its foreign-key checks off, and the order above and
the topics keep every reference whole.

One pruner at a time: on PostgreSQL a run holds a session advisory lock (``PRUNE_LOCK``), and a process
that finds it taken skips its round (``prune`` gives None); a SQLite state has one serving process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fulfiller.store.base import Pruned, StoreUnavailable
from fulfiller.store.schema import JOBLESS_EVENTS, Dialect

if TYPE_CHECKING:
    from fulfiller.store.sql import SqlStore

# pg_try_advisory_lock key held while pruning ("fulp" in ASCII; migrations hold "fulf").
PRUNE_LOCK = 0x66756C70

# What a prune deletes, as "FROM ... WHERE ..." with the cutoff as their placeholders (jobs: twice).
OLD_JOBS = "FROM jobs WHERE created_at < ? AND updated_at < ? AND status NOT IN ('queued', 'running')"
OLD_EVENTS = f"FROM events WHERE {JOBLESS_EVENTS} AND received_at < ?"

# One transaction's deletions: (jobs, events) deleted, and whether the batch was full (more may be left).
Sweep = Callable[[Any, Dialect, float, int], tuple[int, int, bool]]


async def prune(store: SqlStore, cutoff: float, batch: int, dry_run: bool) -> Pruned | None:
    """Delete what was last changed (jobs) or received (other topics' events) before ``cutoff`` (epoch
    seconds), on a thread and a connection of its own; see the module. Cancelling it stops the run after
    the transaction in flight."""
    stop = threading.Event()
    run = asyncio.ensure_future(asyncio.to_thread(_run, store, cutoff, batch, dry_run, stop))
    try:
        return await asyncio.shield(run)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([run])
        raise


def _run(store: SqlStore, cutoff: float, batch: int, dry_run: bool, stop: threading.Event) -> Pruned | None:
    conn = store.connect()
    try:
        cur = conn.cursor()
        if dry_run:
            return _count(cur, store.dialect, cutoff, store.state_bytes(cur))
        if not _take_turn(conn, store.dialect):
            return None
        jobs = events = batches = 0
        for sweep in (_jobs_batch, _events_batch):
            more = True
            while more and not stop.is_set():
                deleted_jobs, deleted_events, more = _transaction(cur, store.dialect, sweep, cutoff, batch)
                if deleted_jobs or deleted_events:
                    jobs, events, batches = jobs + deleted_jobs, events + deleted_events, batches + 1
        return Pruned(jobs, events, batches, store.state_bytes(cur))
    except StoreUnavailable:
        raise
    except Exception as exc:
        raise StoreUnavailable(f"pruning failed: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()  # a PostgreSQL session's advisory lock ends with it


def _take_turn(conn: Any, dialect: Dialect) -> bool:
    """Prepare ``conn`` for pruning; False when another process is pruning this state (PostgreSQL)."""
    if dialect.name == "sqlite":
        conn.execute("PRAGMA foreign_keys = OFF")  # see the module: the deletions keep every reference whole
        return True
    return bool(dialect.execute(conn.cursor(), "SELECT pg_try_advisory_lock(?)", (PRUNE_LOCK,)).fetchone()[0])


def _transaction(cur: Any, dialect: Dialect, sweep: Sweep, cutoff: float, batch: int) -> tuple[int, int, bool]:
    cur.execute(dialect.begin)
    try:
        done = sweep(cur, dialect, cutoff, batch)
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")
    return done


def _jobs_batch(cur: Any, dialect: Dialect, cutoff: float, batch: int) -> tuple[int, int, bool]:
    """Up to ``batch`` old finished jobs, their attempts and their events. PostgreSQL locks the rows as it
    finds them (passing over those another transaction holds), so a job requeued meanwhile is not taken."""
    found = dialect.execute(cur, f"SELECT id, event_id {OLD_JOBS} LIMIT ?" + dialect.skip_locked,
                            (cutoff, cutoff, batch)).fetchall()
    if not found:
        return 0, 0, False
    job_ids = tuple(job_id for job_id, _ in found)
    marks = _marks(len(found))
    dialect.execute(cur, f"DELETE FROM attempts WHERE job_id IN ({marks})", job_ids)
    dialect.execute(cur, f"DELETE FROM jobs WHERE id IN ({marks})", job_ids)
    dialect.execute(cur, f"DELETE FROM events WHERE event_id IN ({marks})", tuple(event_id for _, event_id in found))
    return len(found), cur.rowcount, len(found) == batch


def _events_batch(cur: Any, dialect: Dialect, cutoff: float, batch: int) -> tuple[int, int, bool]:
    """Up to ``batch`` old events of other topics than requests."""
    found = dialect.execute(cur, f"SELECT event_id {OLD_EVENTS} LIMIT ?" + dialect.skip_locked,
                            (cutoff, batch)).fetchall()
    if not found:
        return 0, 0, False
    dialect.execute(cur, f"DELETE FROM events WHERE event_id IN ({_marks(len(found))})", tuple(r[0] for r in found))
    return 0, cur.rowcount, len(found) == batch


def _count(cur: Any, dialect: Dialect, cutoff: float, state_bytes: int) -> Pruned:
    """What a prune would delete now (each job has one event of its own)."""
    jobs = dialect.execute(cur, f"SELECT count(*) {OLD_JOBS}", (cutoff, cutoff)).fetchone()[0]
    others = dialect.execute(cur, f"SELECT count(*) {OLD_EVENTS}", (cutoff,)).fetchone()[0]
    return Pruned(int(jobs), int(jobs) + int(others), 0, state_bytes)


def _marks(n: int) -> str:
    return ", ".join("?" * n)
