"""PostgreSQL backend: the state a fleet of receivers and workers shares.

Writes keep the writer's shape (``writer.Writer``: one writer thread per process,
group commit, one failing write never spoils its neighbours). What PostgreSQL adds:

* A batch first runs without savepoints (half the round trips: each one costs
  the writer thread the GIL twice); only when a write fails does it run again
  with the writer's savepoint per write.
* Replicas that start together apply migrations one at a time, under an
  advisory lock.
* Claims use ``FOR UPDATE SKIP LOCKED``, so workers in many processes pass
  over each other's rows instead of queueing on them.
* Work that becomes runnable sends a ``NOTIFY`` in the transaction that queues
  it (one per batch); an idle worker ``LISTEN``\\s on its own connection and
  wakes at once. Polling stays as the fallback (a lapsed lease notifies nobody).
* Two receivers storing the same events take their row locks in event-id
  order, so they do not deadlock; when something else does, PostgreSQL aborts
  one transaction and its whole batch is simply run again.
* A restart of the database is survived: the writer reconnects on its next
  batch (callers meanwhile get StoreUnavailable, so the receiver says 503),
  the readers' pool checks a connection before lending it, and the listener
  reconnects on its own.

The URL may carry a password: nothing here puts it in a message or log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from fulfiller.store.base import StoreUnavailable
from fulfiller.store.ingest import Ingest
from fulfiller.store.schema import Dialect, apply_migrations
from fulfiller.store.sql import SqlStore
from fulfiller.store.writer import Write, Writer

log = logging.getLogger("fulfiller.store.postgres")

POSTGRES = Dialect(
    name="postgresql", placeholder="%s", serial_pk="BIGSERIAL PRIMARY KEY", begin="BEGIN",
    skip_locked=" FOR UPDATE SKIP LOCKED",
)
CHANNEL = "fulfiller_jobs"
# pg_advisory_xact_lock key held while migrating ("fulf" in ASCII).
MIGRATION_LOCK = 0x66756C66
# libpq settings we default (the URL wins when it sets them): fail fast on a dead
# host instead of hanging the writer, and notice a silently dropped connection.
CONNECT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
    "application_name": "fulfiller",
}
# A receiver must answer before the sender gives up: a statement stuck this long
# (a lock held by a wedged session) fails, and the delivery is retried.
STATEMENT_TIMEOUT = "30s"
_URL_USERINFO = re.compile(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", re.I)
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact_dsn(text: str, password: str | None = None) -> str:
    """``text`` with any database password (in a URL, a ``password=`` pair, or verbatim) replaced."""
    text = _URL_USERINFO.sub(r"\1:REDACTED@", text)
    text = _PASSWORD_KV.sub(r"\1REDACTED", text)
    if password:
        for form in {password, unquote(password)}:
            if form:
                text = text.replace(form, "REDACTED")
    return text


class PostgresStore(SqlStore):
    """State in one PostgreSQL database, shared by any number of processes."""

    dialect = POSTGRES
    writer: PostgresWriter
    pool_max = 4  # reader connections per process (admin pages, metrics)
    read_timeout_s = 10.0  # wait for a reader connection before giving up (503-ish for reads)
    pool_reconnect_s = 2.0  # how long the readers' pool keeps retrying one connection in the background
    listen_check_s = 15.0  # how often an idle LISTEN connection proves it is alive

    def __init__(self, url: str):
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("PostgreSQL URL must start with postgresql://")
        self._password = parts.password
        self.display_url = redact_dsn(url, self._password)
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ValueError(f"bad PostgreSQL URL {self.display_url}: {self._redact(str(exc))}") from None
        self._conninfo = make_conninfo(url, **{k: v for k, v in CONNECT_DEFAULTS.items() if k not in given})
        self._pool: ConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: threading.Thread | None = None
        self._stop_listening = threading.Event()
        self.listening = threading.Event()  # set while a LISTEN connection is up (health, tests)

    def __repr__(self) -> str:
        return f"PostgresStore({self.display_url!r})"

    def _redact(self, text: str) -> str:
        return redact_dsn(text, self._password)

    # -- connections ------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except Exception as exc:
            raise StoreUnavailable(f"cannot connect to {self.display_url}: {self._redact(str(exc))}") from None
        try:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        except Exception:
            conn.close()
            raise
        return conn

    def _configure_reader(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_listening.clear()
        await super().open()
        self._pool = ConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},
            min_size=1,
            max_size=self.pool_max,
            configure=self._configure_reader,
            check=ConnectionPool.check_connection,  # a connection broken by a restart is dropped, not lent
            # Give up a failing reconnection soon: the next read asks again at once, instead of
            # waiting out a backoff that grew while the database was down.
            reconnect_timeout=self.pool_reconnect_s,
            name="fulfiller-readers",
            open=False,
        )
        self._pool.open(wait=False)  # the writer just proved the database answers; readers fill in behind

    def _new_writer(self) -> PostgresWriter:
        return PostgresWriter(self.connect, self._redact)

    def migrate(self, conn: Any) -> None:
        # Replicas start together: one applies the migrations, the others wait, then find nothing to do.
        conn.execute("SET statement_timeout = 0")
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            apply_migrations(conn, POSTGRES)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except Exception:
                pass
            raise

    def _open_sync(self) -> None:
        try:
            super()._open_sync()
        except StoreUnavailable:
            raise
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot prepare {self.display_url}: {self._redact(str(exc))}") from None

    @contextmanager
    def _reader(self) -> Iterator[Any]:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        try:
            with self._pool.connection(timeout=self.read_timeout_s) as conn:
                yield conn
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"store read failed: {type(exc).__name__}: {self._redact(str(exc))}") from None

    def state_bytes(self, cur: Any) -> int:
        return int(cur.execute("SELECT pg_database_size(current_database())").fetchone()[0])

    async def close(self) -> None:
        await super().close()
        self._stop_listening.set()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join)
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.close, 5.0)

    # -- LISTEN / NOTIFY ----------------------------------------------------------------

    def _queued(self) -> None:
        self.writer.notify_at_commit()

    async def wait_for_work(self, timeout: float) -> None:
        # Only processes that run workers listen: a receiver never calls this.
        if self._listener is None and not self._stop_listening.is_set():
            self._listener = threading.Thread(target=self._listen_loop, name="store-listener", daemon=True)
            self._listener.start()
        await super().wait_for_work(timeout)

    def _wake_threadsafe(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _listen_loop(self) -> None:
        backoff = 0.1
        failing = False
        while not self._stop_listening.is_set():
            conn = None
            try:
                conn = self.connect()
                conn.execute(f"LISTEN {CHANNEL}")
                if failing:
                    log.info("listening for queued work again")
                failing = False
                backoff = 0.1
                # Work queued while we were not listening sent its notification to nobody.
                self._wake_threadsafe()
                self.listening.set()
                last_check = time.monotonic()
                while not self._stop_listening.is_set():
                    for _ in conn.notifies(timeout=0.5, stop_after=1):
                        self._wake_threadsafe()
                    if time.monotonic() - last_check > self.listen_check_s:
                        conn.execute("SELECT 1")  # a dead connection delivers nothing and says nothing
                        last_check = time.monotonic()
            except Exception as exc:
                if not self._stop_listening.is_set() and not failing:
                    log.warning("lost the LISTEN connection (%s); polling until it is back",
                                self._redact(f"{type(exc).__name__}: {exc}"))
                failing = True
            finally:
                self.listening.clear()
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
            if self._stop_listening.wait(backoff):
                break
            backoff = min(backoff * 2, 5.0)


class PostgresWriter(Writer):
    """The writer, with what PostgreSQL adds: a batch's ingests in event-id order, a batch that lost a
    deadlock run again, database errors as StoreUnavailable (redacted), and one NOTIFY per batch that
    queued work.

    It takes no ``run_writes``: a batch runs its ingests one by one, each under ``_guard``; each costs
    a round trip, but lock order across receivers is what keeps them from deadlocking.
    """

    batch_retries = 5  # deadlock / serialization failures: run the batch again this many times

    def __init__(self, connect: Callable[[], Any], redact: Callable[[str], str]) -> None:
        super().__init__(connect, POSTGRES)
        self._redact = redact
        self._notify_pending = False  # the running batch queued work (see notify_at_commit)

    def notify_at_commit(self) -> None:
        """Called by a write that queued work: the batch sends one NOTIFY before it commits (see
        _before_commit), and PostgreSQL delivers it when, and only if, the transaction commits."""
        self._notify_pending = True

    def _run_batch(self, conn: Any, fns: list[Write]) -> list[Any]:
        # Receivers given the same events (a sender retries against any replica) insert the
        # same rows; a batch that inserts its events in event-id order takes those row locks
        # in the same order as every other batch, so two batches never wait on each other
        # in a cycle. Other writes keep their order, after the ingests.
        def place(i: int) -> tuple[int, str, int]:
            fn = fns[i]
            return (0, fn.event.event_id, i) if isinstance(fn, Ingest) else (1, "", i)

        order = sorted(range(len(fns)), key=place)
        guarded = [self._guard(fns[i]) for i in order]
        for attempt in range(self.batch_retries + 1):
            self._notify_pending = False
            try:
                ran = super()._run_batch(conn, guarded)
            except _RetryBatch as retry:
                # A deadlock the ordering cannot prevent (lifecycle updates racing) or a
                # serialization failure: the whole transaction goes, nothing of it was
                # stored, and running the batch again is safe.
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error as exc:
                    raise StoreUnavailable(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
                if attempt == self.batch_retries:
                    raise StoreUnavailable(f"write batch kept failing: {retry.reason}") from None
                log.info("write batch rolled back (%s); running it again", retry.reason)
                time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
                continue
            except psycopg.Error as exc:  # the connection or the commit: the writer reconnects
                raise StoreUnavailable(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
            results: list[Any] = [None] * len(fns)
            for position, index in enumerate(order):
                results[index] = ran[position]
            return results
        raise AssertionError("unreachable")  # pragma: no cover

    def _before_commit(self, cur: Any) -> None:
        # One NOTIFY per transaction, however many jobs it queued.
        if self._notify_pending:
            cur.execute(f"NOTIFY {CHANNEL}")
            self._notify_pending = False

    def _rolled_back(self, exc: Exception) -> None:
        # What the rolled-back attempt queued, the savepointed rerun queues again.
        self._notify_pending = False
        if isinstance(exc, _DatabaseError) and exc.sqlstate[:2] in ("08", "57"):
            raise exc  # connection lost, statement timeout, shutdown: not one write's fault

    def _guard(self, fn: Write) -> Write:
        """``fn`` whose database errors reach its caller as StoreUnavailable, never raw.

        The writer rolls a failing write back to its savepoint and hands the error to
        its caller alone: a constraint violation, a value PostgreSQL refuses (a NUL in
        text), a statement timeout. Callers (the receiver's 503, the worker's loop)
        expect StoreUnavailable for all of them. A transaction-rollback error is
        different: the batch's other writes may hold the locks the deadlock is about,
        so the whole batch goes and runs again.
        """

        def op(cur: Any) -> Any:
            try:
                return fn(cur)
            except psycopg.Error as exc:
                if (exc.sqlstate or "").startswith("40"):  # transaction rollback: deadlock, serialization
                    raise _RetryBatch(type(exc).__name__) from None
                raise _DatabaseError(f"{type(exc).__name__}: {self._redact(str(exc))}", exc.sqlstate) from None

        return op


class _DatabaseError(StoreUnavailable):
    """A write's database error, as callers see it, keeping its SQLSTATE for the batch to judge."""

    def __init__(self, message: str, sqlstate: str | None):
        super().__init__(message)
        self.sqlstate = sqlstate or ""


class _RetryBatch(BaseException):
    """Raised through the writer's per-write handling (it catches Exception) to abort the whole batch."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
