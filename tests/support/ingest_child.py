"""The SQLite store's ingest child, hung on purpose: stopped as a hung process or a stuck fsync leaves it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

from fulfiller.store.sqlite import SQLiteStore


@contextlib.contextmanager
def stopped_child(store: SQLiteStore) -> Iterator[subprocess.Popen[bytes]]:
    """The store's running ingest child, stopped (SIGSTOP) for the block; let go after if it still lives."""
    proc = store.ingester.process
    assert proc is not None and proc.poll() is None, "the ingest child is not running"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
