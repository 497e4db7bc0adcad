"""SQLite backend: one file, WAL, ``synchronous=FULL`` so an acked event survives power loss.

Webhook deliveries are parsed and committed by a child process (``ingester``, reached
through ``ingest_client``), off the event loop's interpreter lock; every other write
goes through the writer thread.

Checkpoints (copying the WAL back into the database file, and its fsync) run in
a thread of their own: left to SQLite, every thousandth page written makes one
commit do it, and every write waiting on that commit waits for the copy and its
sync. The thread also starts the WAL over once it is long (see
``SQLiteStore.checkpoint``).

The state is one serving process's (``serve`` or ``worker``): it holds the state's
lock (``lock.StateLock``) while it runs; other commands read and change jobs beside it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fulfiller.events import SOURCE_REQUESTED
from fulfiller.intake.admission import Delivery
from fulfiller.store.ingest_client import DEADLINE_S, IngestProcess
from fulfiller.store.lock import StateLock
from fulfiller.store.schema import Dialect, apply_migrations
from fulfiller.store.sql import SqlStore
from fulfiller.store.writer import Writer

log = logging.getLogger("fulfiller.store.sqlite")

_sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync

SQLITE = Dialect(
    name="sqlite", placeholder="?", serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT", begin="BEGIN IMMEDIATE",
    skip_locked="",
)


class SQLiteStore(SqlStore):
    """State in one SQLite file, served by one process; other processes on its host may read and write it."""

    dialect = SQLITE
    checkpoint_every_s = 0.2  # about SQLite's own cadence (1000 pages) at full intake
    # The writer's own checkpoints only bound the WAL should the checkpoint thread fall far behind.
    fallback_checkpoint_pages = 20_000
    restart_wal_frames = 4096  # 16 MiB of 4 KiB pages: RESTART seldom, and before the WAL grows long
    restart_catch_up_passes = 2
    restart_wait_ms = 10

    def __init__(self, url: str, *, serving: bool = False, ingest_deadline_s: float = DEADLINE_S):
        """``serving``: this process serves from the file (``serve``, ``worker``) and takes its lock now,
        before any server starts (StateLocked, a ConfigError, when another process holds it); ``close``
        lets it go. ``ingest_deadline_s``: how long a delivery waits on the ingest child before it is
        answered 503 and the child is replaced."""
        super().__init__()
        parts = urlsplit(url)
        # sqlite:///relative.db -> "relative.db"; sqlite:////abs.db -> "/abs.db"
        self.path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not self.path:
            raise ValueError("sqlite URL needs a path: sqlite:///PATH")
        query = parse_qs(parts.query)
        # How long a write waits for another process's lock before the receiver answers 503.
        self.busy_timeout_ms = int(query.get("busy_timeout_ms", ["5000"])[0])
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._database_fd: int | None = None
        self.ingester = IngestProcess(url, deadline_s=ingest_deadline_s)  # commits the receiver's deliveries
        self.state_lock = StateLock(self.path) if serving else None
        if self.state_lock is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.state_lock.acquire()

    def connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000,
            # Room for the writer's multi-row inserts, one prepared statement per batch size seen.
            cached_statements=512,
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # A batch's multi-row inserts keep a statement journal; past 64 KiB it would spill to a temporary
        # file, created, written and deleted at every commit. In memory it costs no I/O at all.
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA wal_autocheckpoint = {self.fallback_checkpoint_pages}")
        return conn

    def _new_writer(self) -> Writer:
        return Writer(self.connect, SQLITE, run_writes=self.ingestion.run_writes,
                      integrity_errors=(sqlite3.IntegrityError,))

    async def open(self) -> None:
        if self.state_lock is not None:  # again, after a close
            self.state_lock.acquire()
        await super().open()
        self._stop_checkpoints.clear()
        # For the checkpointer's own syncs of the database file. Closing a descriptor of a file drops
        # every POSIX lock this process holds on it, SQLite's included: it is closed after the last
        # connection (see close).
        self._database_fd = os.open(self.path, os.O_RDONLY)
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(self._database_fd,),
                                              name="store-checkpointer", daemon=True)
        self._checkpointer.start()

    def _ingester_serves(self) -> bool:
        """The child serves the loop it started on; a caller on another loop (a test, a CLI) uses the thread."""
        loop = self.ingester.loop
        return loop is None or loop is asyncio.get_running_loop()

    async def ingest(self, delivery: Delivery) -> bool:
        if not self._ingester_serves():
            return await super().ingest(delivery)
        stored = await self.ingester.ingest(delivery)
        if stored and delivery.topic == SOURCE_REQUESTED:
            self._wake()  # a new job (or an invalid one: a worker that wakes for nothing just sleeps again)
        return stored

    async def ping(self) -> None:
        await super().ping()
        if self._ingester_serves():
            await self.ingester.probe()  # not ready while the child hangs, nor while it may not restart yet

    def _checkpoint_loop(self, database_fd: int) -> None:
        """Checkpoint every ``checkpoint_every_s``, beside the writers, until the store closes."""
        conn = None
        while not self._stop_checkpoints.wait(self.checkpoint_every_s):
            try:
                conn = conn or self.checkpoint_connection()
                self.checkpoint(conn, database_fd)
            except (sqlite3.Error, OSError) as exc:  # tried next time; meanwhile the writer's fallback bounds the WAL
                log.warning("WAL checkpoint failed: %s", exc)
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def checkpoint_connection(self) -> sqlite3.Connection:
        """A connection for ``checkpoint``: it waits at most ``restart_wait_ms`` for a lock."""
        conn = self.connect()
        conn.execute(f"PRAGMA busy_timeout = {self.restart_wait_ms}")
        return conn

    def checkpoint(self, conn: sqlite3.Connection, database_fd: int) -> bool:
        """Copy committed WAL pages into the database file; once the WAL is ``restart_wal_frames`` long,
        also make the next commit write it from the start again. True when it did.

        PASSIVE copies beside the writers. A commit starts the WAL over only if every frame was
        copied when its transaction began, and under steady intake some commit always begins while
        PASSIVE runs: the WAL grows until a commit runs the writer's fallback checkpoint, holding
        its batch's acks. RESTART starts the WAL over, and keeps new commits out while it copies
        what PASSIVE left and syncs the database file. To keep that short, PASSIVE first runs
        ``restart_catch_up_passes`` more times (each copies what landed during the one before),
        and ``database_fd`` is synced here after each pass, beside the writers, so RESTART's own
        sync has little left to write. RESTART waits at most ``restart_wait_ms`` for the writer
        and readers, then tries next time.
        """
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < self.restart_wal_frames:
            return False
        for _ in range(self.restart_catch_up_passes):
            _sync(database_fd)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        _sync(database_fd)
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        return not busy

    def migrate(self, conn: Any) -> None:
        # A migration may build a table again (SQLite's way to drop a constraint), and dropping the old
        # one with foreign keys on would delete, or refuse, the rows that reference it. Foreign keys are
        # off while migrating (the pragma is ignored inside a transaction) and checked before commit.
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                applied = apply_migrations(conn, SQLITE)
                # The check reads every row: only after a migration, not at every start.
                broken = conn.execute("PRAGMA foreign_key_check").fetchone() if applied else None
                if broken is not None:
                    raise sqlite3.IntegrityError(f"migration left a row without its parent: {tuple(broken)}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute("PRAGMA foreign_keys = ON")

    def state_bytes(self, cur: Any) -> int:
        """The database file and its WAL (what the state takes on disk, between checkpoints)."""
        size = 0
        for path in (self.path, f"{self.path}-wal"):
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:
                pass
        return size

    def backup(self, to: str) -> None:
        """A consistent copy of the database in ``to`` (a new file), taken while others write: SQLite's online
        backup API, in one step from one read transaction, which in WAL mode holds no writer back. It takes
        no lock of the store's (``serve`` keeps serving), and the copy is one self-contained file."""
        source = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000)
        try:
            target = sqlite3.connect(to, isolation_level=None)
            try:
                source.backup(target)  # pages=-1: every page in one step, so the copy is one snapshot
                target.execute("PRAGMA journal_mode = DELETE")  # no -wal or -shm files beside the copy
            finally:
                target.close()
        finally:
            source.close()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        yield conn

    async def close(self) -> None:
        await self.ingester.close()
        self._stop_checkpoints.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
            self._checkpointer = None
        await super().close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()
        if self._database_fd is not None:  # last: see open
            os.close(self._database_fd)
            self._database_fd = None
        if self.state_lock is not None:
            self.state_lock.release()
