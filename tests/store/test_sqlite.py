"""The SQLite backend's connections: what makes an ack durable, and what keeps a batch commit cheap."""

from __future__ import annotations

import itertools
import os
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fulfiller.store import sqlite as sqlite_store
from fulfiller.store.ingest import Ingest
from fulfiller.store.schema import apply_migrations, migrations
from fulfiller.store.sqlite import SQLITE, SQLiteStore
from store.builders import requested


def test_every_connection_syncs_the_wal_at_each_commit(tmp_path: Path) -> None:
    conn = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}").connect()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()


def _open_files() -> list[str]:
    """What this process's file descriptors point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return found


def _open_temp_files() -> list[str]:
    """Files this process holds open that were deleted on opening: how SQLite keeps its temporary files."""
    return [target for target in _open_files() if target.endswith("(deleted)")]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads open files from /proc")
def test_a_large_batch_writes_no_temporary_file(tmp_path: Path) -> None:
    """A multi-row insert in a transaction keeps a statement journal; past 64 KiB SQLite spills it to a
    temporary file unless told to keep it in memory, and then every batch commit creates, writes and
    deletes a file besides the WAL."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    conn = store.connect()
    try:
        store.migrate(conn)
        # Rows already stored: the journal keeps the pages a statement changes that existed before it.
        for prefix in ("old", "new"):
            batch = [Ingest(store.ingestion, requested(f"{prefix}_{n}")) for n in range(store.writer.max_batch - 1)]
            before = _open_temp_files()
            # The batch's last write runs after its ingests, in its transaction: a spilled statement
            # journal stays open until the transaction ends.
            used, results = store.writer.commit_batch(conn, [*batch, lambda cur: _open_temp_files()])
            assert used is conn and results[:-1] == [True] * len(batch), results
            assert results[-1] == before, prefix
    finally:
        conn.close()


class _CommitsLandWhilePassiveCopies:
    """The checkpointer's connection, with commits landing during each of its PASSIVE checkpoints,
    as they always do under steady intake: their transaction began before the copy ended (each
    PASSIVE runs as the last write of a batch the writer's connection commits).

    ``landing`` is how many batches land during each pass in turn (one each after those). It records
    the frames that landed during each pass, and the WAL index (``_wal_index``) when RESTART began."""

    def __init__(self, conn: sqlite3.Connection, store: SQLiteStore, writer: sqlite3.Connection,
                 landing: tuple[int, ...] = ()) -> None:
        self.conn, self.store, self.writer = conn, store, writer
        self.landing = list(landing)
        self.landed: list[int] = []
        self.at_restart: tuple[int, int] | None = None

    def execute(self, sql: str) -> Any:
        if "RESTART" in sql:
            self.at_restart = _wal_index(self.store)
        if "PASSIVE" not in sql:
            return self.conn.execute(sql)
        before = _wal_index(self.store)[0]
        batch = [ingest for _ in range(self.landing.pop(0) if self.landing else 1) for ingest in _batch(self.store)]

        def passive(cur: Any) -> Any:
            return self.conn.execute(sql).fetchone()

        used, results = self.store.writer.commit_batch(self.writer, [*batch, passive])
        assert used is self.writer and results[:-1] == [True] * len(batch), results
        self.landed.append(_wal_index(self.store)[0] - before)
        return SimpleNamespace(fetchone=lambda: results[-1])


_batches = itertools.count()


def _batch(store: SQLiteStore) -> list[Ingest]:
    n = next(_batches)
    return [Ingest(store.ingestion, requested(f"{n}_{k}")) for k in range(8)]


@dataclass
class _Wal:
    """A store with a short restart length, a writer's connection, and the checkpointer's connection and
    descriptor of the database file."""

    store: SQLiteStore
    writer: sqlite3.Connection
    checkpointer: sqlite3.Connection
    database_fd: int

    def checkpoint(self, conn: Any = None) -> bool:
        return self.store.checkpoint(conn or self.checkpointer, self.database_fd)


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[_Wal]:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.restart_wal_frames = 64
    writer = store.connect()
    store.migrate(writer)
    checkpointer = store.checkpoint_connection()
    database_fd = os.open(store.path, os.O_RDONLY)
    yield _Wal(store, writer, checkpointer, database_fd)
    writer.close()
    checkpointer.close()
    os.close(database_fd)  # after the connections, as the store does


def _commit(store: SQLiteStore, writer: sqlite3.Connection) -> None:
    _, results = store.writer.commit_batch(writer, _batch(store))
    assert results == [True] * 8


# The WAL file's layout (sqlite.org/fileformat.html#the_write_ahead_log): a 32-byte header, then frames of
# a 24-byte header and a page; the header's checkpoint sequence number changes when the WAL starts over.
_WAL_FRAME = 24 + 4096


def _wal_index(store: SQLiteStore) -> tuple[int, int]:
    """The last committed WAL frame and the last one copied into the database file, from the WAL index
    (the -shm file: ``mxFrame`` at byte 16 of its header, the checkpoint's ``nBackfill`` at byte 96)."""
    with open(f"{store.path}-shm", "rb") as shm:
        head = shm.read(100)
    return struct.unpack_from("=I", head, 16)[0], struct.unpack_from("=I", head, 96)[0]


def _wal_frames_written(store: SQLiteStore) -> int:
    return (os.path.getsize(f"{store.path}-wal") - 32) // _WAL_FRAME


def _wal_sequence(store: SQLiteStore) -> bytes:
    with open(f"{store.path}-wal", "rb") as wal:
        return wal.read(16)[12:]


def _grow_wal(store: SQLiteStore, writer: sqlite3.Connection) -> None:
    while _wal_frames_written(store) < store.restart_wal_frames:
        _commit(store, writer)


def test_the_checkpointer_starts_a_long_wal_over_though_commits_land_while_it_copies(wal: _Wal) -> None:
    """A commit writes the WAL from its start only if every frame had been copied back when its
    transaction began, which PASSIVE checkpoints never achieve under steady intake: the WAL grew until
    a commit ran SQLite's own checkpoint while its batch waited."""
    _grow_wal(wal.store, wal.writer)
    sequence = _wal_sequence(wal.store)
    assert wal.checkpoint(_CommitsLandWhilePassiveCopies(wal.checkpointer, wal.store, wal.writer))
    _commit(wal.store, wal.writer)
    assert _wal_sequence(wal.store) != sequence  # this commit wrote the WAL from its start


def test_restart_copies_only_what_landed_during_the_last_catch_up_pass(wal: _Wal) -> None:
    """RESTART holds every commit off while it copies what is left and syncs the database file. What
    landed during the first pass (an interval's intake) is copied by more PASSIVE passes first, each
    shorter than the one before, so RESTART copies only what landed during the last."""
    _grow_wal(wal.store, wal.writer)
    conn = _CommitsLandWhilePassiveCopies(wal.checkpointer, wal.store, wal.writer, landing=(12,))
    assert wal.checkpoint(conn)
    assert conn.at_restart is not None
    last, copied = conn.at_restart
    assert last - copied == conn.landed[-1]
    assert last - copied < conn.landed[0]
    last, copied = _wal_index(wal.store)
    assert last == copied


def test_what_the_passes_copied_is_synced_before_restart_holds_commits_off(
    wal: _Wal, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite syncs the database file after a pass only if it copied the whole WAL, which under intake
    none does, so RESTART's own sync would write out every page the passes copied while commits wait.
    The checkpointer has synced all of it when RESTART begins."""
    _grow_wal(wal.store, wal.writer)
    synced: list[int] = []  # the frames copied back when each of the checkpointer's syncs began

    def sync(fd: int) -> None:
        synced.append(_wal_index(wal.store)[1])
        os.fsync(fd)

    monkeypatch.setattr(sqlite_store, "_sync", sync)
    conn = _CommitsLandWhilePassiveCopies(wal.checkpointer, wal.store, wal.writer)
    assert wal.checkpoint(conn)
    assert conn.at_restart is not None
    assert synced and synced[-1] == conn.at_restart[1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads open files from /proc")
async def test_a_closed_store_leaves_no_descriptor_of_its_database_open(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    assert os.path.realpath(store.path) in _open_files()
    await store.close()
    assert os.path.realpath(store.path) not in _open_files()


def test_the_checkpointer_leaves_a_short_wal_to_passive_checkpoints(wal: _Wal) -> None:
    _commit(wal.store, wal.writer)
    assert _wal_frames_written(wal.store) < wal.store.restart_wal_frames
    assert not wal.checkpoint()


def test_the_checkpointer_does_not_keep_the_writer_waiting_on_a_reader(wal: _Wal) -> None:
    """RESTART holds the write lock while it waits for readers, so it gives up after its own short
    wait, not the store's busy timeout, and starts the WAL over on a later try."""
    _grow_wal(wal.store, wal.writer)
    reader = wal.store.connect()
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # a snapshot the WAL must keep
        _commit(wal.store, wal.writer)
        started = time.monotonic()
        assert not wal.checkpoint()
        assert time.monotonic() - started < wal.store.busy_timeout_ms / 1000 / 2
    finally:
        reader.close()
    assert wal.checkpoint()


def test_version_3_builds_jobs_again_without_the_unique_event_id_and_keeps_every_row(tmp_path: Path) -> None:
    """SQLite drops a constraint by building the table again; the jobs, their indexes and the attempts
    that reference them all survive it, and foreign keys are enforced again after."""
    store = SQLiteStore(f"sqlite:///{tmp_path / 'state.db'}")
    conn = store.connect()
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")  # the schema as version 2 left it, with jobs and their attempts
        assert apply_migrations(conn, SQLITE, upto=2) == 2
        for n in range(5):  # rows as that version's code wrote them (today's writes name later columns)
            cur.execute("INSERT INTO events (event_id, topic, received_at, body) VALUES (?, 'video.source_requested',"
                        " 0, '')", (f"evt-{n}",))
            cur.execute("INSERT INTO jobs (id, event_id, status, payload, code, variation, created_at, updated_at)"
                        " VALUES (?, ?, 'queued', '{}', 'HRT-1', 2, ?, ?)", (f"job-{n}", f"evt-{n}", n, n))
        cur.execute("INSERT INTO attempts (job_id, step, started_at, duration_ms) SELECT id, 'upload', 0, 1 FROM jobs")
        cur.execute("COMMIT")
        columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(jobs)"))
        jobs_before = conn.execute(f"SELECT {columns} FROM jobs ORDER BY id").fetchall()

        store.migrate(conn)

        assert conn.execute(f"SELECT {columns} FROM jobs ORDER BY id").fetchall() == jobs_before
        indexes = {name: origin for _, name, _, origin, _ in conn.execute("PRAGMA index_list(jobs)")}
        assert "u" not in indexes.values()  # no UNIQUE constraint's index is left
        assert {"jobs_runnable", "jobs_created", "jobs_storage_key", "jobs_coords"} <= set(indexes)
        assert conn.execute("SELECT count(*) FROM attempts JOIN jobs ON jobs.id = attempts.job_id").fetchone() == (5,)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("SELECT max(version) FROM fulfiller_schema").fetchone() == (len(migrations(SQLITE)),)
    finally:
        conn.close()
