"""The SQLite backend's connections: what makes an ack durable, and what keeps a batch commit cheap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fulfiller.store.sql import Ingest
from fulfiller.store.sqlite import SQLiteStore
from store.builders import requested


def test_every_connection_syncs_the_wal_at_each_commit(tmp_path: Path) -> None:
    conn = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")._connect()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()


def _open_temp_files() -> list[str]:
    """Files this process holds open that were deleted on opening: how SQLite keeps its temporary files."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.endswith("(deleted)"):
            found.append(target)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads open files from /proc")
def test_a_large_batch_writes_no_temporary_file(tmp_path: Path) -> None:
    """A multi-row insert in a transaction keeps a statement journal; past 64 KiB SQLite spills it to a
    temporary file unless told to keep it in memory, and then every batch commit creates, writes and
    deletes a file besides the WAL."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    conn = store._connect()
    try:
        store._migrate(conn)
        cur = conn.cursor()
        # Rows already stored: the journal keeps the pages a statement changes that existed before it.
        for prefix in ("old", "new"):
            batch = [Ingest(store, requested(f"{prefix}_{n}")) for n in range(store.max_batch)]
            before = _open_temp_files()
            cur.execute("BEGIN IMMEDIATE")
            assert store._run_writes(cur, batch) == [True] * len(batch)
            during = _open_temp_files()  # a spilled statement journal stays open until the transaction ends
            cur.execute("COMMIT")
            assert during == before, prefix
    finally:
        conn.close()
