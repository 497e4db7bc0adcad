"""The store on a SQL database, shared by the SQLite and PostgreSQL backends.

Writes go through one writer thread that commits them in groups: while one
commit waits on fsync, new writes queue up and share the next one. A write
that fails is undone alone (its batch runs again with a savepoint per write),
and each caller is answered only after the commit that holds its write.
Reads use their own connections and never wait behind a commit.

The writer thread takes the interpreter lock (GIL) back after every statement,
and while the event loop is busy each take can wait a whole switch interval
(``sys.getswitchinterval()``): a batch of new events is therefore stored with a few multi-row
statements, not a few statements per event.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import logging
import operator
import queue
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fulfiller.events import Lifecycle
from fulfiller.jobs import Attempt, Job, Status
from fulfiller.store.base import (
    CRASHED,
    MAX_CRASHES,
    IncomingEvent,
    Requeue,
    Stats,
    Store,
    StoreUnavailable,
    UnreadableJob,
)

log = logging.getLogger("fulfiller.store")

# Columns of the jobs table, in Job's field order (attempts live in their own table).
JOB_COLUMNS = (
    "id", "event_id", "status", "request_kind", "payload", "storage_key", "project_id", "code",
    "variation", "locale", "expires_at", "created_at", "updated_at", "chosen_aspect", "extension",
    "content_type", "content_hash", "bytes", "skip_reason", "error", "lifecycle_reason", "source",
    "runs", "lease_owner", "lease_until", "not_before", "skip_requested", "callback_key", "crashes",
)
# What a worker may record on a job it holds.
UPDATABLE = frozenset(JOB_COLUMNS) - {"id", "event_id", "status", "payload", "created_at", "lease_owner"}
_SELECT_JOB = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
# What a new job carries (intake.new_job sets no other field): the other columns start as the table's
# defaults, which are the Job's. Each NULL bound costs as much as a short string, and most would be NULL.
NEW_JOB_COLUMNS = (
    "id", "event_id", "status", "request_kind", "payload", "storage_key", "project_id", "code", "variation",
    "locale", "expires_at", "created_at", "updated_at", "chosen_aspect", "error", "callback_key",
)
_PAYLOAD = NEW_JOB_COLUMNS.index("payload")
_new_job_columns = operator.attrgetter(*NEW_JOB_COLUMNS)  # a Job's column values as a tuple, in one call
_INSERT_JOBS = f"INSERT INTO jobs ({', '.join(NEW_JOB_COLUMNS)}) VALUES"
# A request whose wait token a stored job holds is a duplicate: its job is not inserted (see _ingest).
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
# The longest coordinates key stored as it is: events.lc_coords is in an index, whose rows have a size
# limit (~2.7 KB on PostgreSQL); a longer one is stored as its digest.
_COORDS_KEY_CHARS = 512
_PENDING_LC = ("SELECT event_id, lc_status, lc_reason, received_at FROM events"
               " WHERE lc_status IS NOT NULL AND applied_job IS NULL AND ")
_EARLY_LIFECYCLE = (
    f"SELECT * FROM ({_PENDING_LC}lc_storage_key = ? ORDER BY received_at DESC LIMIT 1) AS by_key"
    f" UNION ALL SELECT * FROM ({_PENDING_LC}lc_storage_key IS NULL AND lc_coords = ?"
    " ORDER BY received_at DESC LIMIT 1) AS by_coords ORDER BY received_at DESC LIMIT 1"
)


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL databases we speak."""

    name: str  # "sqlite" or "postgresql": for the few migrations whose SQL differs
    placeholder: str  # "?" or "%s"
    serial_pk: str  # an auto-increment primary key column type
    begin: str  # a write transaction that takes the write lock at once
    skip_locked: str  # claim suffix so concurrent claimers pass over each other's rows

    def q(self, sql: str) -> str:
        return sql.replace("?", self.placeholder) if self.placeholder != "?" else sql


def migrations(d: Dialect) -> list[list[str]]:
    """Schema versions in order; version N is ``migrations()[N-1]``."""
    first = [  # version 1, its text as it ran (version 3 builds the jobs table again from it)
            """CREATE TABLE events (
                event_id TEXT PRIMARY KEY,
                topic TEXT NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                body TEXT NOT NULL,
                note TEXT,
                lc_status TEXT,
                lc_storage_key TEXT,
                lc_coords TEXT,
                lc_aspect TEXT,
                lc_reason TEXT,
                applied_job TEXT
            )""",
            "CREATE INDEX events_pending_lc ON events (lc_status, applied_job)",
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE REFERENCES events (event_id),
                status TEXT NOT NULL,
                request_kind TEXT,
                payload TEXT NOT NULL,
                storage_key TEXT,
                project_id TEXT,
                code TEXT,
                variation BIGINT,
                locale TEXT,
                expires_at DOUBLE PRECISION,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                chosen_aspect TEXT,
                extension TEXT,
                content_type TEXT,
                content_hash TEXT,
                bytes BIGINT,
                skip_reason TEXT,
                error TEXT,
                lifecycle_reason TEXT,
                source TEXT,
                runs INTEGER NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_until DOUBLE PRECISION,
                not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
                skip_requested TEXT
            )""",
            "CREATE INDEX jobs_runnable ON jobs (status, not_before)",
            "CREATE INDEX jobs_created ON jobs (created_at)",
            "CREATE INDEX jobs_storage_key ON jobs (storage_key)",
            "CREATE INDEX jobs_coords ON jobs (project_id, code, variation, locale)",
            f"""CREATE TABLE attempts (
                id {d.serial_pk},
                job_id TEXT NOT NULL REFERENCES jobs (id),
                step TEXT NOT NULL,
                started_at DOUBLE PRECISION NOT NULL,
                duration_ms DOUBLE PRECISION NOT NULL,
                http_status INTEGER,
                error TEXT,
                detail TEXT
            )""",
            "CREATE INDEX attempts_job ON attempts (job_id, id)",
            # Every new job looks for a lifecycle event that arrived before it. Without these
            # (small, partial) indexes that lookup scanned the whole events table on every ingest.
            "CREATE INDEX events_lc_early_key ON events (lc_storage_key, received_at)"
            " WHERE lc_status IS NOT NULL AND applied_job IS NULL",
            "CREATE INDEX events_lc_early_coords ON events (lc_coords, received_at)"
            " WHERE lc_status IS NOT NULL AND applied_job IS NULL",
    ]
    return [
        first,
        [
            # The partial indexes above hold exactly the pending lifecycle events, so "is any pending?"
            # reads one of them; this index only cost every stored event one more insert.
            "DROP INDEX IF EXISTS events_pending_lc",
        ],
        # jobs.event_id need not be unique in the schema: a job is inserted only with its event, in one
        # transaction, and events.event_id is the key that refuses a duplicate. The index was never read,
        # and with a publisher's random event ids every new job wrote a page of it somewhere else.
        _rebuild_jobs_without_unique_event_id(first) if d.name == "sqlite"
        else ["ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_event_id_key"],
        [
            # The wait token identifies a request whatever its (unsigned) event id: completeCallbackUrl,
            # or its SHA-256 when long (intake.wait_token_key), so that no URL can exceed an index row.
            "ALTER TABLE jobs ADD COLUMN callback_key TEXT",
            "CREATE UNIQUE INDEX jobs_callback_key ON jobs (callback_key)",
            # How often a worker died (or lost its lease) holding the job: a job that keeps taking
            # workers down is failed instead of claimed again.
            "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0",
            # Three fields of up to 1 KiB each (and the variation) exceed PostgreSQL's B-tree row limit
            # (~2.7 KB); the project id adds nothing to the code's selectivity.
            "DROP INDEX jobs_coords",
            "CREATE INDEX jobs_coords ON jobs (code, variation, locale)",
        ],
    ]


def _rebuild_jobs_without_unique_event_id(first: list[str]) -> list[str]:
    """SQLite cannot drop a column constraint: the table is built again (its "12-step" ALTER TABLE), from
    the statements that built it first, minus the constraint. The store runs it with foreign keys off."""
    table = next(sql for sql in first if sql.startswith("CREATE TABLE jobs ("))
    indexes = [sql for sql in first if sql.startswith("CREATE INDEX jobs_")]
    return [
        table.replace("CREATE TABLE jobs (", "CREATE TABLE jobs_rebuilt (")
        .replace(" UNIQUE REFERENCES ", " REFERENCES "),
        "INSERT INTO jobs_rebuilt SELECT * FROM jobs",
        "DROP TABLE jobs",
        "ALTER TABLE jobs_rebuilt RENAME TO jobs",
        *indexes,
    ]


def coords_key(project_id: str, code: str, variation: int, locale: str) -> str:
    """The key a lifecycle event and a job share when they name the same coordinates: their JSON (ASCII),
    or its SHA-256 when that is long."""
    key = json.dumps([project_id, code, variation, locale])
    return key if len(key) <= _COORDS_KEY_CHARS else "sha256:" + hashlib.sha256(key.encode("ascii")).hexdigest()


class SqlStore(Store):
    """A Store over DB-API connections; subclasses say how to connect and which dialect."""

    dialect: Dialect
    max_batch = 256
    bulk_ingest = True  # store a batch's new events with multi-row statements (see _run_writes)

    def __init__(self) -> None:
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._work: asyncio.Event | None = None

    # -- what a backend provides --------------------------------------------------

    @abstractmethod
    def _connect(self) -> Any:
        """A new DB-API connection in autocommit mode (we issue BEGIN/COMMIT ourselves)."""

    @abstractmethod
    def _migrate(self, conn: Any) -> None:
        """Apply pending migrations (backends add their own locking)."""

    @abstractmethod
    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """A connection for reads, from the calling thread's pool."""

    # -- plumbing -----------------------------------------------------------------

    async def open(self) -> None:
        self._work = asyncio.Event()
        await asyncio.to_thread(self._open_sync)
        self._writer = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._writer.start()

    def _open_sync(self) -> None:
        conn = self._connect()
        try:
            self._migrate(conn)
        finally:
            conn.close()

    def _apply_migrations(self, conn: Any, upto: int | None = None) -> int:
        """Apply the versions the database lacks (up to ``upto``, or all), in the caller's transaction; how
        many it applied."""
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS fulfiller_schema (version INTEGER NOT NULL)")
        cur.execute("SELECT max(version) FROM fulfiller_schema")
        current = cur.fetchone()[0] or 0
        versions = migrations(self.dialect)[:upto]
        for version, statements in enumerate(versions, start=1):
            if version <= current:
                continue
            for sql in statements:
                cur.execute(sql)
            cur.execute(self.dialect.q("INSERT INTO fulfiller_schema (version) VALUES (?)"), (version,))
        return max(0, len(versions) - current)

    async def close(self) -> None:
        if self._writer is not None:
            self._writes.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None

    async def _write(self, fn: Callable[[Any], Any]) -> Any:
        if self._writer is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._writes.put((fn, fut, loop))
        result = await fut
        if isinstance(result, BaseException):
            raise result
        return result

    def _write_loop(self) -> None:
        conn = None
        stopping = False
        while not stopping:
            item = self._writes.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._writes.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            conn, results = self.commit_batch(conn, [fn for fn, _, _ in batch])
            # One wake-up per event loop per batch, not one per write.
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            for (_, fut, loop), result in zip(batch, results):
                by_loop.setdefault(loop, []).append((fut, result))
            for loop, settled in by_loop.items():
                loop.call_soon_threadsafe(_settle, settled)
        if conn is not None:
            conn.close()

    def commit_batch(self, conn: Any, fns: list[Callable[[Any], Any]]) -> tuple[Any, list[Any]]:
        """Run one batch of writes on ``conn`` (connecting first if it is None) as one group commit: the
        connection to use next, and each write's result or exception. When the connection or the commit
        fails, nothing in the batch is stored, every write gets the same StoreUnavailable, and the next
        batch reconnects.

        The writer thread commits every batch with it, and so does the SQLite ingest child
        (``ingester``), which owns its connection: pass None first, then what it returns,
        and close that when done. A batch should hold at most ``max_batch`` writes."""
        try:
            if conn is None:
                conn = self._connect()
            return conn, self._run_batch(conn, fns)
        except Exception as exc:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            failure = StoreUnavailable(f"store write failed: {type(exc).__name__}: {exc}")
            return None, [failure] * len(fns)

    def _run_batch(self, conn: Any, fns: list[Callable[[Any], Any]]) -> list[Any]:
        """The batch in one transaction: plainly first, then, if a write failed, with a savepoint per write.

        Writes almost never fail (a duplicate is ``ON CONFLICT DO NOTHING``), and every
        statement costs the writer thread the GIL (and, on a server, a round trip): a
        savepoint and its release around every write would double that for nothing.
        """
        results = self._run_plain(conn, fns)
        return results if results is not None else self._run_savepointed(conn, fns)

    def _run_plain(self, conn: Any, fns: list[Callable[[Any], Any]]) -> list[Any] | None:
        """The batch without savepoints; None (rolled back) when one of its writes failed."""
        cur = conn.cursor()
        cur.execute(self.dialect.begin)  # a lock not granted in time fails the batch here, once
        try:
            results = self._run_writes(cur, fns)
            self._before_commit(cur)
        except Exception as exc:
            cur.execute("ROLLBACK")  # a dead connection raises here: the whole batch fails
            self._rolled_back(exc)
            return None
        cur.execute("COMMIT")
        return results

    def _run_writes(self, cur: Any, fns: list[Callable[[Any], Any]]) -> list[Any]:
        """Each write's result, in order. The ingests that only add rows (no lifecycle to match) go first,
        all together; the writes of one batch commit together, so their order within it is free."""
        many = {i: fn.event for i, fn in enumerate(fns) if isinstance(fn, Ingest) and fn.event.lifecycle is None}
        if not self.bulk_ingest or len(many) < 2:
            return [fn(cur) for fn in fns]
        results: list[Any] = [None] * len(fns)
        for i, stored in zip(many, self._ingest_many(cur, list(many.values()))):
            results[i] = stored
        for i, fn in enumerate(fns):
            if i not in many:
                results[i] = fn(cur)
        return results

    def _run_savepointed(self, conn: Any, fns: list[Callable[[Any], Any]]) -> list[Any]:
        """The batch with each write in its own savepoint, so a failing write fails alone."""
        cur = conn.cursor()
        cur.execute(self.dialect.begin)
        results: list[Any] = []
        try:
            for fn in fns:
                cur.execute("SAVEPOINT op")
                try:
                    results.append(fn(cur))
                    cur.execute("RELEASE SAVEPOINT op")
                except Exception as exc:
                    # Undo this write only; if even that fails the connection is gone
                    # and the whole batch fails below.
                    cur.execute("ROLLBACK TO SAVEPOINT op")
                    cur.execute("RELEASE SAVEPOINT op")
                    if isinstance(exc, self._integrity_errors()):
                        exc = StoreUnavailable(f"{type(exc).__name__}: {exc}")
                    results.append(exc)
            self._before_commit(cur)
            cur.execute("COMMIT")
        except Exception:
            try:
                cur.execute("ROLLBACK")
            except Exception:
                pass
            raise
        return results

    def _before_commit(self, cur: Any) -> None:
        """The last statement of every batch's transaction (PostgreSQL sends its NOTIFY here)."""

    def _rolled_back(self, exc: Exception) -> None:
        """A write failed the plain attempt, now rolled back; raise when the batch, not one write, is at fault."""

    def _integrity_errors(self) -> tuple[type[BaseException], ...]:
        """Errors that spoil one write, not the transaction (constraint violations, bad data)."""
        return ()

    async def _read(self, fn: Callable[[Any], Any]) -> Any:
        def run() -> Any:
            with self._reader() as conn:
                return fn(conn.cursor())

        try:
            return await asyncio.to_thread(run)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"store read failed: {type(exc).__name__}: {exc}") from exc

    def _x(self, cur: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur.execute(self.dialect.q(sql), params)
        return cur

    def _wake(self) -> None:
        if self._work is not None:
            self._work.set()

    def _queued(self, cur: Any) -> None:
        """Called inside the transaction that queues a job; a backend that can wake other processes does so here."""

    async def wait_for_work(self, timeout: float) -> None:
        assert self._work is not None
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    # -- operations -----------------------------------------------------------------

    async def ping(self) -> None:
        now = time.time()
        await self._write(lambda cur: self._x(cur, "SELECT ?", (now,)).fetchone())

    async def ingest(self, event: IncomingEvent) -> bool:
        stored = await self._write(Ingest(self, event))
        if stored and event.job is not None:
            self._wake()
        return stored

    def _ingest(self, cur: Any, ev: IncomingEvent) -> bool:
        lc = ev.lifecycle
        lc_coords = coords_key(*_coords_tuple(lc)) if lc and lc.coords else None
        self._x(
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
            self._x(cur, _rows_sql(_INSERT_JOBS, len(NEW_JOB_COLUMNS), 1) + _UNLESS_HELD,
                    _job_values(ev.job, ev.body))
            if cur.rowcount == 0:  # a stored request holds its wait token: a duplicate, and nothing is kept
                self._x(cur, "DELETE FROM events WHERE event_id = ?", (ev.event_id,))
                return False
            self._apply_early_lifecycle(cur, ev.job)
            if ev.job.status == Status.QUEUED:
                self._queued(cur)
        if lc is not None:
            job_id = self._match_job(cur, lc)
            if job_id is not None:
                self._apply_lifecycle(cur, ev.event_id, job_id, lc.status, lc.reason, ev.received_at)
        return True

    def _ingest_many(self, cur: Any, evs: list[IncomingEvent]) -> list[bool]:
        """``_ingest`` for events without a lifecycle, with one statement per step for them all.

        Under the batch's write lock nobody else inserts, so the ids and wait tokens found here
        (with those of the batch's earlier events) are all the duplicates; should an insert clash
        anyway, it raises and the batch runs write by write.
        """
        keys = tuple(ev.job.callback_key for ev in evs if ev.job is not None and ev.job.callback_key is not None)
        sql = _KNOWN_AND_PENDING.format(ids=_marks(len(evs)), keys=_marks(len(keys)) or "NULL")
        found = self._x(cur, sql, (*(ev.event_id for ev in evs), *keys)).fetchall()
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
        self._x(cur, _rows_sql(_INSERT_EVENTS, 5, len(new)), tuple(itertools.chain.from_iterable(
            (ev.event_id, ev.topic, ev.received_at, _event_body(ev), ev.note) for ev in new)))
        made = [(ev.job, ev.body) for ev in new if ev.job is not None]
        if made:
            self._x(cur, _rows_sql(_INSERT_JOBS, len(NEW_JOB_COLUMNS), len(made)),
                    tuple(itertools.chain.from_iterable(_job_values(job, body) for job, body in made)))
            if lifecycle_pending:  # rare: look for each job's, as _ingest does
                for job, _ in made:
                    self._apply_early_lifecycle(cur, job)
            if any(job.status == Status.QUEUED for job, _ in made):
                self._queued(cur)
        return stored

    def _match_job(self, cur: Any, lc: Lifecycle) -> str | None:
        if lc.storage_key:
            row = self._x(
                cur, "SELECT id FROM jobs WHERE storage_key = ? ORDER BY created_at DESC LIMIT 1", (lc.storage_key,)
            ).fetchone()
            if row:
                return row[0]
        if lc.coords is None:
            return None
        rows = self._x(
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
        self._x(
            cur,
            "UPDATE jobs SET status = ?, lifecycle_reason = ?, lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ?",
            (status, reason, now, job_id),
        )
        self._x(cur, "UPDATE events SET applied_job = ? WHERE event_id = ?", (job_id, event_id))

    def _apply_early_lifecycle(self, cur: Any, job: Job) -> None:
        """A follow-up event that arrived before its request (deliveries can cross) applies now."""
        if job.status != Status.QUEUED:
            return  # an invalid job has no reliable coordinates, and nothing to close
        assert job.project_id is not None and job.code is not None
        assert job.variation is not None and job.locale is not None
        # The newest pending one naming its storage key, or (carrying no key) its coordinates:
        # each half is served by its partial index (one WHERE with an OR would scan every event).
        row = self._x(cur, _EARLY_LIFECYCLE, (
            job.storage_key, coords_key(job.project_id, job.code, job.variation, job.locale),
        )).fetchone()
        if row:
            self._apply_lifecycle(cur, row[0], job.id, row[1], row[2], job.created_at)

    async def claim(self, owner: str, lease_s: float) -> Job | None:
        # The write takes the job by its id alone; the row is read after it commits. A row that cannot
        # be read (or decoded) then fails that read, not the claim: the job is ours, and ours to end.
        job_id, crashed_out = await self._write(lambda cur: self._take(cur, owner, lease_s))
        for crashed in crashed_out:
            log.warning("job failed: %s", CRASHED, extra={"job_id": crashed, "status": Status.FAILED, "reason": CRASHED})
        if job_id is None:
            return None
        row = await self._read(lambda cur: self._x(cur, f"{_SELECT_JOB} WHERE id = ?", (job_id,)).fetchone())
        if row is None:
            return None  # deleted since (by hand: pruning keeps running jobs)
        try:
            return _job_from_row(row)
        except Exception as exc:
            raise UnreadableJob(job_id, exc) from exc

    def _take(self, cur: Any, owner: str, lease_s: float) -> tuple[str | None, list[str]]:
        """The id of the oldest runnable job, now leased to ``owner`` (None when there is none), and the jobs
        passed over because they had crashed too often, now ``failed``.

        A job still ``running`` with a lapsed lease lost its worker (a crash, a lease it could not
        renew): that counts a crash, and the MAX_CRASHES-th ends it instead of handing it out again.
        """
        now = time.time()
        crashed_out: list[str] = []
        while True:
            row = self._x(
                cur,
                "SELECT id, status, crashes FROM jobs WHERE (status = 'queued' AND not_before <= ?)"
                " OR (status = 'running' AND lease_until < ?) ORDER BY not_before, created_at LIMIT 1"
                + self.dialect.skip_locked,
                (now, now),
            ).fetchone()
            if row is None:
                return None, crashed_out
            job_id, status, crashes = row
            if status == Status.RUNNING:
                crashes += 1
                if crashes >= MAX_CRASHES:
                    self._x(
                        cur,
                        "UPDATE jobs SET status = 'failed', error = ?, crashes = ?, lease_owner = NULL,"
                        " lease_until = NULL, updated_at = ? WHERE id = ?",
                        (CRASHED, crashes, now, job_id),
                    )
                    crashed_out.append(job_id)
                    continue
            self._x(
                cur,
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?, runs = runs + 1,"
                " crashes = ?, updated_at = ? WHERE id = ?",
                (owner, now + lease_s, crashes, now, job_id),
            )
            return job_id, crashed_out

    async def renew(self, job_id: str, owner: str, lease_s: float) -> bool:
        def op(cur: Any) -> bool:
            self._x(
                cur,
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (time.time() + lease_s, job_id, owner),
            )
            return bool(cur.rowcount)

        return await self._write(op)

    async def add_attempt(self, job_id: str, attempt: Attempt) -> None:
        await self._write(
            lambda cur: self._x(
                cur,
                "INSERT INTO attempts (job_id, step, started_at, duration_ms, http_status, error, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, attempt.step, attempt.started_at, attempt.duration_ms, attempt.http_status,
                 attempt.error, attempt.detail),
            )
        )

    async def update(self, job_id: str, owner: str, fields: dict[str, Any]) -> bool:
        return await self._update_held(job_id, owner, fields, None)

    async def finish(self, job_id: str, owner: str, status: str, fields: dict[str, Any]) -> bool:
        return await self._update_held(job_id, owner, {**fields, "lease_until": None, "not_before": 0.0}, status)

    async def _update_held(self, job_id: str, owner: str, fields: dict[str, Any], status: str | None) -> bool:
        bad = set(fields) - UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        sets = [f"{c} = ?" for c in fields] + ["updated_at = ?"]
        values: list[Any] = [*fields.values(), time.time()]
        if status is not None:
            sets += ["status = ?", "lease_owner = NULL"]
            values.append(status)

        def op(cur: Any) -> bool:
            self._x(
                cur,
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (*values, job_id, owner),
            )
            return bool(cur.rowcount)

        return await self._write(op)

    async def release(self, job_id: str, owner: str, not_before: float = 0.0) -> bool:
        def op(cur: Any) -> bool:
            self._x(
                cur,
                "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, not_before = ?,"
                " updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (not_before, time.time(), job_id, owner),
            )
            released = bool(cur.rowcount)
            if released:
                self._queued(cur)
            return released

        released = await self._write(op)
        if released:
            self._wake()
        return released

    def _load_job(self, cur: Any, job_id: str) -> Job | None:
        """The job with its attempts, for people to read (an odd payload does not stop it)."""
        row = self._x(cur, f"{_SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = _job_from_row(row, for_display=True)
        rows = self._x(
            cur,
            "SELECT step, started_at, duration_ms, http_status, error, detail FROM attempts"
            " WHERE job_id = ? ORDER BY id",
            (job_id,),
        ).fetchall()
        job.attempts = [Attempt(*r) for r in rows]
        return job

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read(lambda cur: self._load_job(cur, job_id))

    async def list_jobs(
        self, status: str | None = None, code: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job]:
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if code:
            # The operator's text is a plain substring: its own % and _ are not wildcards.
            literal = code.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("lower(code) LIKE ? ESCAPE '\\'")
            params.append(f"%{literal}%")
        sql = _SELECT_JOB + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        def op(cur: Any) -> list[Job]:
            found = [_job_from_row(r, for_display=True) for r in self._x(cur, sql, (*params, limit, offset)).fetchall()]
            if found:
                by_id = {j.id: j for j in found}
                marks = ", ".join("?" for _ in by_id)
                for job_id, *attempt in self._x(
                    cur,
                    "SELECT job_id, step, started_at, duration_ms, http_status, error, detail FROM attempts"
                    f" WHERE job_id IN ({marks}) ORDER BY id",
                    tuple(by_id),
                ).fetchall():
                    by_id[job_id].attempts.append(Attempt(*attempt))
            return found

        return await self._read(op)

    async def requeue(self, job_id: str, skip_reason: str | None = None) -> Requeue:
        def op(cur: Any) -> Requeue:
            row = self._x(cur, "SELECT status, expires_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return Requeue.NOT_FOUND
            status, expires_at = row
            if status == Status.RUNNING:
                return Requeue.IS_RUNNING
            if status == Status.INVALID:
                return Requeue.NOT_RERUNNABLE
            if expires_at is not None and expires_at <= time.time():
                return Requeue.PAST_DEADLINE
            if skip_reason is not None and status not in (Status.QUEUED, Status.FAILED):
                return Requeue.ALREADY_CLOSED
            self._x(
                cur,
                "UPDATE jobs SET status = 'queued', not_before = 0, error = NULL, skip_reason = NULL,"
                " skip_requested = ?, updated_at = ? WHERE id = ?",
                (skip_reason, time.time(), job_id),
            )
            self._queued(cur)
            return Requeue.QUEUED

        outcome = await self._write(op)
        if outcome == Requeue.QUEUED:
            self._wake()
        return outcome

    async def stats(self) -> Stats:
        def op(cur: Any) -> Stats:
            counts = self._x(cur, "SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
            oldest = self._x(cur, "SELECT min(created_at) FROM jobs WHERE status = 'queued'").fetchone()[0]
            return Stats({s: int(n) for s, n in counts}, oldest)

        return await self._read(op)


class Ingest:
    """An ingest, as a write: callable like any other, and recognisable so a batch can store many at once."""

    __slots__ = ("store", "event")

    def __init__(self, store: SqlStore, event: IncomingEvent):
        self.store = store
        self.event = event

    def __call__(self, cur: Any) -> bool:
        return self.store._ingest(cur, self.event)


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


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, result in settled:
        if not fut.done():  # its caller may have been cancelled meanwhile
            fut.set_result(result)


def _job_from_row(row: tuple[Any, ...], *, for_display: bool = False) -> Job:
    """The Job a row holds. Its payload decodes, or this raises; ``for_display``: a payload that does not
    (a job stored before intake bounded nesting, a row written by hand) is None instead."""
    values = dict(zip(JOB_COLUMNS, row))
    try:
        values["payload"] = json.loads(values["payload"])
    except (ValueError, TypeError, RecursionError):
        if not for_display:
            raise
        values["payload"] = None
    return Job(**values)
