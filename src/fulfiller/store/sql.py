"""The store on a SQL database, shared by the SQLite and PostgreSQL backends: claims and leases, a held
job's updates, operators' reads and reruns, and the queue's stats.

Its parts: the tables (``schema``), the writer thread that commits every write
(``writer``), and what an ingest stores (``ingest_event``). Reads use their own
connections and never wait behind a commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fulfiller.jobs import Attempt, Job, Status
from fulfiller.store import retention
from fulfiller.store.base import (
    CRASHED,
    MAX_CRASHES,
    IncomingEvent,
    Lease,
    Pruned,
    Requeue,
    Stats,
    Store,
    StoreUnavailable,
    UnreadableJob,
)
from fulfiller.store.ingest import Ingest, Ingestion
from fulfiller.store.rows import SELECT_JOB, UPDATABLE, job_from_row
from fulfiller.store.schema import Dialect
from fulfiller.store.writer import Writer

log = logging.getLogger("fulfiller.store")

# A job a worker holds: running, or found invalid at intake and leased for its negative-ack (_take_invalid).
_HELD = "status IN ('running', 'invalid')"


class SqlStore(Store):
    """A Store over DB-API connections; subclasses say how to connect, which dialect, and which writer."""

    dialect: Dialect

    def __init__(self) -> None:
        self.ingestion = Ingestion(self.dialect, self._queued)
        self.writer = self._new_writer()
        self._work: asyncio.Event | None = None

    # -- what a backend provides --------------------------------------------------

    @abstractmethod
    def connect(self) -> Any:
        """A new DB-API connection in autocommit mode (we issue BEGIN/COMMIT ourselves), set up as the store's."""

    @abstractmethod
    def migrate(self, conn: Any) -> None:
        """Apply pending migrations on ``conn`` (``schema.apply_migrations``, with the backend's locking)."""

    @abstractmethod
    def _new_writer(self) -> Writer:
        """The writer that commits this store's writes (its thread starts in ``open``)."""

    @abstractmethod
    @contextmanager
    def _reader(self) -> Iterator[Any]:
        """A connection for reads, from the calling thread's pool."""

    @abstractmethod
    def state_bytes(self, cur: Any) -> int:
        """The state's size on disk (``fulfiller_state_bytes``); ``cur`` is on one of the store's connections."""

    # -- plumbing -----------------------------------------------------------------

    async def open(self) -> None:
        self._work = asyncio.Event()
        await asyncio.to_thread(self._open_sync)
        self.writer.start()

    def _open_sync(self) -> None:
        conn = self.connect()
        try:
            self.migrate(conn)
        finally:
            conn.close()

    async def close(self) -> None:
        await self.writer.stop()

    async def read(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(cursor)`` on a reader connection, off the event loop; StoreUnavailable when the read fails."""

        def run() -> Any:
            with self._reader() as conn:
                return fn(conn.cursor())

        try:
            return await asyncio.to_thread(run)
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"store read failed: {type(exc).__name__}: {exc}") from exc

    def _wake(self) -> None:
        if self._work is not None:
            self._work.set()

    def _queued(self) -> None:
        """Called inside the transaction that queues a job; a backend that can wake other processes does so here."""

    async def wait_for_work(self, timeout: float) -> None:
        """Until work is queued (in this process, or, for a backend that is told, in another), the earliest job
        waiting between tries is due, or ``timeout``."""
        assert self._work is not None
        try:
            due_in = await self.read(self._due_in)
        except StoreUnavailable:
            due_in = None
        if due_in is not None:
            timeout = min(timeout, max(0.0, due_in))
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            pass
        self._work.clear()

    def _due_in(self, cur: Any) -> float | None:
        """Seconds until the earliest queued job is due, by the store's clock (0 or less: one is due now,
        e.g. it fell due since the last claim looked); None when none is queued."""
        row = self.dialect.execute(
            cur, f"SELECT min(not_before) - {self.dialect.clock} FROM jobs WHERE status = 'queued'"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # -- operations -----------------------------------------------------------------

    async def ping(self) -> None:
        now = time.time()
        await self.writer.submit(lambda cur: self.dialect.execute(cur, "SELECT ?", (now,)).fetchone())

    async def ingest_event(self, event: IncomingEvent) -> bool:
        stored = await self.writer.submit(Ingest(self.ingestion, event))
        if stored and event.job is not None:
            self._wake()
        return stored

    async def claim(self, owner: str, lease_s: float, *, negative_acks: bool = False) -> Job | None:
        # The write takes the job by its id alone; the row is read after it commits. A row that cannot
        # be read (or decoded) then fails that read, not the claim: the job is ours, and ours to end.
        job_id, crashed_out = await self.writer.submit(lambda cur: self._take(cur, owner, lease_s, negative_acks))
        for crashed in crashed_out:
            log.warning("job failed: %s", CRASHED,
                        extra={"job_id": crashed, "status": Status.FAILED, "reason": CRASHED})
        if job_id is None:
            return None
        select = f"{SELECT_JOB} WHERE id = ?"
        row = await self.read(lambda cur: self.dialect.execute(cur, select, (job_id,)).fetchone())
        if row is None:
            return None  # deleted since (by hand: pruning keeps running jobs)
        try:
            return job_from_row(row)
        except Exception as exc:
            raise UnreadableJob(job_id, exc) from exc

    def _take(self, cur: Any, owner: str, lease_s: float, negative_acks: bool) -> tuple[str | None, list[str]]:
        """The id of the oldest runnable job, now leased to ``owner`` (None when there is none), and the jobs
        passed over because they had crashed too often, now ``failed``.

        A job still ``running`` with a lapsed lease lost its worker (a crash, a lease it could not
        renew): that counts a crash, and the MAX_CRASHES-th ends it instead of handing it out again.
        Due times and leases are read and written by the store's clock (``Dialect.clock``).
        """
        now = time.time()
        clock = self.dialect.clock
        crashed_out: list[str] = []
        while True:
            row = self.dialect.execute(
                cur,
                f"SELECT id, status, crashes FROM jobs WHERE (status = 'queued' AND not_before <= {clock})"
                f" OR (status = 'running' AND lease_until < {clock}) ORDER BY not_before, created_at LIMIT 1"
                + self.dialect.skip_locked,
            ).fetchone()
            if row is None:
                return (self._take_invalid(cur, owner, lease_s) if negative_acks else None), crashed_out
            job_id, status, crashes = row
            if status == Status.RUNNING:
                crashes += 1
                if crashes >= MAX_CRASHES:
                    self.dialect.execute(
                        cur,
                        "UPDATE jobs SET status = 'failed', error = ?, crashes = ?, lease_owner = NULL,"
                        " lease_until = NULL, updated_at = ? WHERE id = ?",
                        (CRASHED, crashes, now, job_id),
                    )
                    crashed_out.append(job_id)
                    continue
            self.dialect.execute(
                cur,
                f"UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = {clock} + ?, runs = runs + 1,"
                " crashes = ?, updated_at = ? WHERE id = ?",
                (owner, lease_s, crashes, now, job_id),
            )
            return job_id, crashed_out

    def _take_invalid(self, cur: Any, owner: str, lease_s: float) -> str | None:
        """A job found invalid at intake, not taken before and not past its deadline, leased to ``owner``
        and left ``invalid``: taken once (``runs`` 1), whatever comes of its negative-ack."""
        clock = self.dialect.clock
        row = self.dialect.execute(
            cur,
            f"SELECT id FROM jobs WHERE status = 'invalid' AND runs = 0 AND expires_at > {clock}"
            " ORDER BY expires_at LIMIT 1" + self.dialect.skip_locked,
        ).fetchone()
        if row is None:
            return None
        self.dialect.execute(
            cur,
            f"UPDATE jobs SET lease_owner = ?, lease_until = {clock} + ?, runs = 1, updated_at = ? WHERE id = ?",
            (owner, lease_s, time.time(), row[0]),
        )
        return str(row[0])

    async def renew(self, job_id: str, owner: str, lease_s: float) -> Lease:
        def op(cur: Any) -> Lease:
            rows = self.dialect.execute(
                cur,
                f"UPDATE jobs SET lease_until = {self.dialect.clock} + ? WHERE id = ? AND lease_owner = ?"
                f" AND {_HELD} RETURNING skip_requested",
                (lease_s, job_id, owner),
            ).fetchall()
            if not rows:
                return Lease.LOST
            return Lease.HELD if rows[0][0] is None else Lease.SKIP_REQUESTED

        return await self.writer.submit(op)

    async def add_attempt(self, job_id: str, attempt: Attempt) -> None:
        await self.writer.submit(
            lambda cur: self.dialect.execute(
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
            self.dialect.execute(
                cur,
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND lease_owner = ? AND {_HELD}",
                (*values, job_id, owner),
            )
            return bool(cur.rowcount)

        return await self.writer.submit(op)

    async def release(self, job_id: str, owner: str, retry_in: float | None = None) -> bool:
        if retry_in is None:
            due: tuple[str, tuple[Any, ...]] = ("not_before = 0", ())
        else:
            due = (f"not_before = {self.dialect.clock} + ?, retries = retries + 1", (retry_in,))

        def op(cur: Any) -> bool:
            self.dialect.execute(
                cur,
                f"UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL, {due[0]},"
                " updated_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (*due[1], time.time(), job_id, owner),
            )
            released = bool(cur.rowcount)
            if released and due_now:
                self._queued()
            return released

        due_now = not retry_in  # a job waiting between tries wakes nobody: idle workers time its due moment
        released = await self.writer.submit(op)
        if released and due_now:
            self._wake()
        return released

    def _load_job(self, cur: Any, job_id: str) -> Job | None:
        """The job with its attempts, for people to read (an odd payload does not stop it)."""
        row = self.dialect.execute(cur, f"{SELECT_JOB} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = job_from_row(row, for_display=True)
        rows = self.dialect.execute(
            cur,
            "SELECT step, started_at, duration_ms, http_status, error, detail FROM attempts"
            " WHERE job_id = ? ORDER BY id",
            (job_id,),
        ).fetchall()
        job.attempts = [Attempt(*r) for r in rows]
        return job

    async def get_job(self, job_id: str) -> Job | None:
        return await self.read(lambda cur: self._load_job(cur, job_id))

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
        sql = SELECT_JOB + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        def op(cur: Any) -> list[Job]:
            rows = self.dialect.execute(cur, sql, (*params, limit, offset)).fetchall()
            found = [job_from_row(r, for_display=True) for r in rows]
            if found:
                by_id = {j.id: j for j in found}
                marks = ", ".join("?" for _ in by_id)
                for job_id, *attempt in self.dialect.execute(
                    cur,
                    "SELECT job_id, step, started_at, duration_ms, http_status, error, detail FROM attempts"
                    f" WHERE job_id IN ({marks}) ORDER BY id",
                    tuple(by_id),
                ).fetchall():
                    by_id[job_id].attempts.append(Attempt(*attempt))
            return found

        return await self.read(op)

    async def requeue(self, job_id: str, skip_reason: str | None = None) -> Requeue:
        def op(cur: Any) -> Requeue:
            row = self.dialect.execute(cur, "SELECT status, expires_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return Requeue.NOT_FOUND
            status, expires_at = row
            if status == Status.RUNNING and skip_reason is None:
                return Requeue.IS_RUNNING
            if status == Status.INVALID:
                return Requeue.NOT_RERUNNABLE
            if expires_at is not None and expires_at <= time.time():
                return Requeue.PAST_DEADLINE
            if skip_reason is not None and status not in (Status.QUEUED, Status.RUNNING, Status.FAILED):
                return Requeue.ALREADY_CLOSED
            if status == Status.RUNNING:
                # Its worker learns of it at its next renewal, stops the try and gives the job back.
                self.dialect.execute(cur, "UPDATE jobs SET skip_requested = ?, updated_at = ? WHERE id = ?",
                                     (skip_reason, time.time(), job_id))
                return Requeue.QUEUED
            # Due at once, and started over: a rerun uploads again rather than send a kept callback.
            self.dialect.execute(
                cur,
                "UPDATE jobs SET status = 'queued', not_before = 0, retries = 0, callback_body = NULL, error = NULL,"
                " skip_reason = NULL, skip_requested = ?, updated_at = ? WHERE id = ?",
                (skip_reason, time.time(), job_id),
            )
            self._queued()
            return Requeue.QUEUED

        outcome = await self.writer.submit(op)
        if outcome == Requeue.QUEUED:
            self._wake()
        return outcome

    async def stats(self) -> Stats:
        def op(cur: Any) -> Stats:
            counts = self.dialect.execute(cur, "SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
            oldest = self.dialect.execute(
                cur,
                "SELECT min(CASE WHEN not_before > created_at THEN not_before ELSE created_at END) FROM jobs"
                f" WHERE status = 'queued' AND not_before <= {self.dialect.clock}",
            ).fetchone()[0]
            return Stats({s: int(n) for s, n in counts}, oldest, self.state_bytes(cur))

        return await self.read(op)

    async def _prune(self, cutoff: float, batch: int, dry_run: bool) -> Pruned | None:
        return await retention.prune(self, cutoff, batch, dry_run)

