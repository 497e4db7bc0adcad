"""Storing what arrives: an event's row, the job it creates, and a lifecycle event applied to its job.

An ingest is a write (``Ingest``) that the writer thread commits with others. That thread
takes the interpreter lock (GIL) back after every statement, and while the event loop is
busy each take can wait a whole switch interval (``sys.getswitchinterval()``): a batch's
new events are therefore stored with a few multi-row statements (``Ingestion.run_writes``),
not a few statements per event.
"""

from __future__ import annotations

import functools
import itertools
import json
import operator
from collections.abc import Callable
from typing import Any

from fulfiller.events import Lifecycle
from fulfiller.jobs import Job, Status
from fulfiller.store.base import IncomingEvent
from fulfiller.store.schema import Dialect, coords_key
from fulfiller.store.writer import Write

# What a new job carries (intake.new_job sets no other field): the other columns start as the table's
# defaults, which are the Job's. Each NULL bound costs as much as a short string, and most would be NULL.
NEW_JOB_COLUMNS = (
    "id", "event_id", "status", "request_kind", "payload", "storage_key", "project_id", "code", "variation",
    "locale", "expires_at", "created_at", "updated_at", "chosen_aspect", "error", "callback_key",
)
_PAYLOAD = NEW_JOB_COLUMNS.index("payload")
_new_job_columns = operator.attrgetter(*NEW_JOB_COLUMNS)  # a Job's column values as a tuple, in one call
_INSERT_JOBS = f"INSERT INTO jobs ({', '.join(NEW_JOB_COLUMNS)}) VALUES"
# A request whose wait token a stored job holds is a duplicate: its job is not inserted (see Ingestion.ingest).
_UNLESS_HELD = " ON CONFLICT (callback_key) DO NOTHING"
_INSERT_EVENTS = "INSERT INTO events (event_id, topic, received_at, body, note) VALUES"
# Which of these event ids are stored (event_id, NULL), which of these wait tokens a job holds
# (NULL, callback_key), and a (NULL, NULL) row if any lifecycle event still waits for its job.
_KNOWN_AND_PENDING = (
    "SELECT event_id, NULL FROM events WHERE event_id IN ({ids})"
    " UNION ALL SELECT NULL, callback_key FROM jobs WHERE callback_key IN ({keys})"
    " UNION ALL SELECT NULL, NULL FROM"
    " (SELECT 1 FROM events WHERE lc_status IS NOT NULL AND applied_job IS NULL LIMIT 1)"
)
_PENDING_LC = ("SELECT event_id, lc_status, lc_reason, received_at FROM events"
               " WHERE lc_status IS NOT NULL AND applied_job IS NULL AND ")
_EARLY_LIFECYCLE = (
    f"SELECT * FROM ({_PENDING_LC}lc_storage_key = ? ORDER BY received_at DESC LIMIT 1) AS by_key"
    f" UNION ALL SELECT * FROM ({_PENDING_LC}lc_storage_key IS NULL AND lc_coords = ?"
    " ORDER BY received_at DESC LIMIT 1) AS by_coords ORDER BY received_at DESC LIMIT 1"
)


class Ingestion:
    """How events are stored on one database: the ingest half of a store's writes."""

    def __init__(self, dialect: Dialect, queued: Callable[[], None]) -> None:
        """``queued`` is called inside each transaction that queues a job (PostgreSQL then wakes idle workers)."""
        self.dialect = dialect
        self._queued = queued

    def run_writes(self, cur: Any, fns: list[Write]) -> list[Any]:
        """Each write's result, in order. The ingests that only add rows (no lifecycle to match) go first,
        all together; the writes of one batch commit together, so their order within it is free."""
        many = {i: fn.event for i, fn in enumerate(fns) if isinstance(fn, Ingest) and fn.event.lifecycle is None}
        if len(many) < 2:
            return [fn(cur) for fn in fns]
        results: list[Any] = [None] * len(fns)
        for i, stored in zip(many, self.ingest_many(cur, list(many.values()))):
            results[i] = stored
        for i, fn in enumerate(fns):
            if i not in many:
                results[i] = fn(cur)
        return results

    def ingest_event(self, cur: Any, ev: IncomingEvent) -> bool:
        """Store the event and what it causes, in the caller's transaction: True if new, False for a duplicate
        (its id stored before, or a request whose wait token a stored job holds)."""
        lc = ev.lifecycle
        lc_coords = coords_key(*_coords_tuple(lc)) if lc and lc.coords else None
        self.dialect.execute(
            cur,
            "INSERT INTO events (event_id, topic, received_at, body, note, lc_status, lc_storage_key,"
            " lc_coords, lc_aspect, lc_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (event_id) DO NOTHING",
            (
                ev.event_id, ev.topic, ev.received_at, _event_body(ev), ev.note,
                lc.status if lc else None, lc.storage_key if lc else None, lc_coords,
                lc.aspect if lc else None, lc.reason if lc else None,
            ),
        )
        if cur.rowcount == 0:
            return False
        if ev.job is not None:
            self.dialect.execute(cur, _rows_sql(_INSERT_JOBS, len(NEW_JOB_COLUMNS), 1) + _UNLESS_HELD,
                                 _job_values(ev.job, ev.body))
            if cur.rowcount == 0:  # a stored request holds its wait token: a duplicate, and nothing is kept
                self.dialect.execute(cur, "DELETE FROM events WHERE event_id = ?", (ev.event_id,))
                return False
            self._apply_early_lifecycle(cur, ev.job)
            if ev.job.status == Status.QUEUED:
                self._queued()
        if lc is not None:
            job_id = self._match_job(cur, lc)
            if job_id is not None:
                self._apply_lifecycle(cur, ev.event_id, job_id, lc.status, lc.reason, ev.received_at)
        return True

    def ingest_many(self, cur: Any, evs: list[IncomingEvent]) -> list[bool]:
        """``ingest_event`` for events without a lifecycle, with one statement per step for them all.

        Under the batch's write lock nobody else inserts, so the ids and wait tokens found here
        (with those of the batch's earlier events) are all the duplicates; should an insert clash
        anyway, it raises and the batch runs write by write.
        """
        keys = tuple(ev.job.callback_key for ev in evs if ev.job is not None and ev.job.callback_key is not None)
        sql = _KNOWN_AND_PENDING.format(ids=_marks(len(evs)), keys=_marks(len(keys)) or "NULL")
        found = self.dialect.execute(cur, sql, (*(ev.event_id for ev in evs), *keys)).fetchall()
        seen = {event_id for event_id, _ in found}
        held = {key for _, key in found}
        lifecycle_pending = (None, None) in found
        stored: list[bool] = []
        new: list[IncomingEvent] = []
        for ev in evs:
            key = ev.job.callback_key if ev.job is not None else None
            stored.append(ev.event_id not in seen and (key is None or key not in held))
            if stored[-1]:
                seen.add(ev.event_id)
                if key is not None:
                    held.add(key)
                new.append(ev)
        if not new:
            return stored
        self.dialect.execute(cur, _rows_sql(_INSERT_EVENTS, 5, len(new)), tuple(itertools.chain.from_iterable(
            (ev.event_id, ev.topic, ev.received_at, _event_body(ev), ev.note) for ev in new)))
        made = [(ev.job, ev.body) for ev in new if ev.job is not None]
        if made:
            self.dialect.execute(cur, _rows_sql(_INSERT_JOBS, len(NEW_JOB_COLUMNS), len(made)),
                                 tuple(itertools.chain.from_iterable(_job_values(job, body) for job, body in made)))
            if lifecycle_pending:  # rare: look for each job's, as ingest does
                for job, _ in made:
                    self._apply_early_lifecycle(cur, job)
            if any(job.status == Status.QUEUED for job, _ in made):
                self._queued()
        return stored

    def _match_job(self, cur: Any, lc: Lifecycle) -> str | None:
        if lc.storage_key:
            row = self.dialect.execute(
                cur, "SELECT id FROM jobs WHERE storage_key = ? ORDER BY created_at DESC LIMIT 1", (lc.storage_key,)
            ).fetchone()
            if row:
                return row[0]
        if lc.coords is None:
            return None
        rows = self.dialect.execute(
            cur,
            "SELECT id, chosen_aspect, payload FROM jobs WHERE project_id = ? AND code = ? AND variation = ?"
            " AND locale = ? ORDER BY created_at DESC",
            _coords_tuple(lc),
        ).fetchall()
        # A hybrid creative has a feed job and a story_reel job on the same coordinates:
        # prefer the one whose aspect is the one the event names.
        for job_id, chosen, payload in rows:
            if lc.aspect and lc.aspect in (chosen, _requested_aspect(payload)):
                return job_id
        return rows[0][0] if rows else None

    def _apply_lifecycle(
        self, cur: Any, event_id: str, job_id: str, status: str, reason: str | None, now: float
    ) -> None:
        self.dialect.execute(
            cur,
            "UPDATE jobs SET status = ?, lifecycle_reason = ?, lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ?",
            (status, reason, now, job_id),
        )
        self.dialect.execute(cur, "UPDATE events SET applied_job = ? WHERE event_id = ?", (job_id, event_id))

    def _apply_early_lifecycle(self, cur: Any, job: Job) -> None:
        """A follow-up event that arrived before its request (deliveries can cross) applies now."""
        if job.status != Status.QUEUED:
            return  # an invalid job has no reliable coordinates, and nothing to close
        assert job.project_id is not None and job.code is not None
        assert job.variation is not None and job.locale is not None
        # The newest pending one naming its storage key, or (carrying no key) its coordinates:
        # each half is served by its partial index (one WHERE with an OR would scan every event).
        row = self.dialect.execute(cur, _EARLY_LIFECYCLE, (
            job.storage_key, coords_key(job.project_id, job.code, job.variation, job.locale),
        )).fetchone()
        if row:
            self._apply_lifecycle(cur, row[0], job.id, row[1], row[2], job.created_at)


class Ingest:
    """An ingest, as a write: callable like any other, and recognisable so a batch can store many at once."""

    __slots__ = ("ingestion", "event")

    def __init__(self, ingestion: Ingestion, event: IncomingEvent):
        self.ingestion = ingestion
        self.event = event

    def __call__(self, cur: Any) -> bool:
        return self.ingestion.ingest_event(cur, self.event)


def _marks(n: int) -> str:
    return ", ".join("?" * n)


@functools.lru_cache(maxsize=1024)
def _rows_sql(head: str, width: int, rows: int) -> str:
    """``head`` followed by ``rows`` tuples of ``width`` placeholders (batch sizes repeat: built once each)."""
    row = f"({_marks(width)})"
    return f"{head} {', '.join([row] * rows)}"


def _event_body(ev: IncomingEvent) -> str:
    """What the event's row keeps of its body: nothing ('') when its job keeps the same text as its payload.

    A request's body is most of what each delivery writes; stored twice, it would add
    to every commit's WAL write and fsync.
    """
    return "" if ev.job is not None else ev.body


def _job_values(job: Job, body: str) -> tuple[Any, ...]:
    """The new job's values for NEW_JOB_COLUMNS, its payload stored as the event's body text: the same JSON,
    not encoded again."""
    values = _new_job_columns(job)
    return (*values[:_PAYLOAD], body, *values[_PAYLOAD + 1:])


def _requested_aspect(payload: str) -> Any:
    """The aspect a stored request names; None when its payload cannot be read back (a job stored before
    intake bounded nesting may hold one too deep for the decoder)."""
    try:
        request = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    creative = request.get("creative") if isinstance(request, dict) else None
    return creative.get("aspectRatio") if isinstance(creative, dict) else None


def _coords_tuple(lc: Lifecycle) -> tuple[str, str, int, str]:
    assert lc.coords is not None
    c = lc.coords
    return (c.project_id, c.code, c.variation, c.locale)

