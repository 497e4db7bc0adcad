"""One serving process per SQLite state: an advisory lock on a file beside the database.

SQLite keeps concurrent writers consistent, but it cannot wake another process's
workers, and the store's ingest child, writer and checkpointer are built to be
alone on their file: a second ``serve`` or ``worker`` on it would only compete
for its write lock (a fleet uses PostgreSQL). Commands that read or change a
job now and then (``jobs``, ``rerun``) take no lock and run beside the holder.

The lock is ``flock`` on ``<database>.lock``: the kernel drops it when its
descriptor closes, so a crashed or killed holder leaves no stale lock behind.
Its descriptor is not inherited, so the holder's children (the ingest child)
neither hold nor need it. The holder writes its pid, host and start time into
the file, so a refusal names it.
"""

from __future__ import annotations

import fcntl
import os
import socket
from datetime import UTC, datetime

from fulfiller.config import ConfigError


class StateLocked(ConfigError):
    """Another process serves from this SQLite state; the command refuses to start (exit 2)."""

    def __init__(self, database: str, holder: str):
        self.database = database
        self.holder = holder
        reason = (f"the SQLite state {database} is in use by {holder} (a fulfiller serve or worker): one process"
                  " per SQLite file; stop that one first, or use PostgreSQL to run several")
        super().__init__([("state", reason)])


class StateLock:
    """The advisory lock on ``database``'s state, taken by the process that serves from it."""

    def __init__(self, database: str):
        self.database = database
        self.path = f"{database}.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (nothing when this lock already holds it); StateLocked naming the holder when
        another holds it, ConfigError when the lock file cannot be made."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError([("state", f"cannot create the lock file {self.path}: {exc.strerror}")]) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise StateLocked(self.database, holder or "another process") from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError([("state", f"cannot lock {self.path}: {exc.strerror}")]) from exc
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing its descriptor drops it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> str:
    """Who holds the lock, as the holder wrote it ("" while it has not written yet)."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip()
