"""SQLite backend: one file, WAL, ``synchronous=FULL`` so an acked event survives power loss."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fulfiller.store.sql import Dialect, SqlStore

SQLITE = Dialect(placeholder="?", serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT", begin="BEGIN IMMEDIATE", skip_locked="")


class SQLiteStore(SqlStore):
    """State in one SQLite file; several processes on one host may share it."""

    dialect = SQLITE

    def __init__(self, url: str):
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

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout_ms / 1000
        )
        conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _migrate(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._apply_migrations(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _integrity_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.IntegrityError,)

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        yield conn

    async def close(self) -> None:
        await super().close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local = threading.local()
