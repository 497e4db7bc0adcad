"""The database's tables and how they came to be: the migrations, in order, and what differs between the SQL
databases the store speaks.

A database records the versions it has (``fulfiller_schema``); ``apply_migrations`` adds the ones it lacks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from fulfiller.config import ConfigError
from fulfiller.events import SOURCE_REQUESTED

# clock_timestamp(), not now(): a write batch is one transaction, and now() is when it began.
_CLOCKS = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "extract(epoch FROM clock_timestamp())::double precision",
}


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL databases we speak."""

    name: str  # "sqlite" or "postgresql": for the few migrations whose SQL differs
    placeholder: str  # "?" or "%s"
    serial_pk: str  # an auto-increment primary key column type
    begin: str  # a write transaction that takes the write lock at once
    skip_locked: str  # claim suffix so concurrent claimers pass over each other's rows

    @property
    def clock(self) -> str:
        """The database's clock in epoch seconds, as an SQL expression. Leases and not-before times are
        written and compared by it, so hosts whose clocks disagree still agree on who holds a job."""
        return _CLOCKS[self.name]

    def q(self, sql: str) -> str:
        """``sql``, written with ``?`` placeholders, in this dialect's."""
        return sql.replace("?", self.placeholder) if self.placeholder != "?" else sql

    def execute(self, cur: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run ``sql`` (written with ``?`` placeholders) on ``cur``; the cursor, to fetch from."""
        cur.execute(self.q(sql), params)
        return cur


# The events that have no job: every topic's but the requests' (each request that is stored makes a job). Retention
# deletes them by age through a partial index with this condition, which its query repeats word for word.
JOBLESS_EVENTS = f"topic <> '{SOURCE_REQUESTED}'"


class SchemaTooNew(ConfigError):
    """The database holds schema versions this build does not know (a newer build migrated it): the command
    refuses to start (exit 2), so a rolled-back build never writes into a schema it does not know."""

    def __init__(self, found: int, known: int):
        self.found = found
        self.known = known
        super().__init__([("state", f"database schema version {found} is newer than this fulfiller ({known})")])


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
        [
            # A job waits between tries in the queue, not in its worker: how many tries in a row failed
            # transiently (the backoff grows with it), the callback a later run sends as it is once the
            # upload is done (its JSON body), and whether a callback try may have reached the platform
            # though its answer was lost (a later 409 is then our own completion).
            "ALTER TABLE jobs ADD COLUMN retries INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN callback_body TEXT",
            "ALTER TABLE jobs ADD COLUMN callback_unanswered BOOLEAN NOT NULL DEFAULT FALSE",
        ],
        [
            # Jobs found invalid at intake that no worker has taken yet: with worker.negative_ack_failures
            # a worker takes each once, before its deadline, to send the platform its negative-ack.
            "CREATE INDEX jobs_invalid_unsent ON jobs (expires_at) WHERE status = 'invalid' AND runs = 0",
        ],
        [
            # Retention finds other topics' old events here (a request's event goes with its job), without
            # reading every event while it holds the write lock; requests, most events, never enter it.
            f"CREATE INDEX events_jobless_received ON events (received_at) WHERE {JOBLESS_EVENTS}",
            # Deleting an event makes the database look for a job that references it. PostgreSQL does it
            # through this index; SQLite's pruning connection turns foreign-key checks off instead (see
            # retention), sparing every new job one more index write.
            *(["CREATE INDEX jobs_event ON jobs (event_id)"] if d.name == "postgresql" else []),
        ],
        [
            # What the master's picture measured (JSON: width, height, rotation, aspect), for operators.
            "ALTER TABLE jobs ADD COLUMN measured TEXT",
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


# The longest coordinates key stored as it is: events.lc_coords is in an index, whose rows have a size
# limit (~2.7 KB on PostgreSQL); a longer one is stored as its digest.
_COORDS_KEY_CHARS = 512


def coords_key(project_id: str, code: str, variation: int, locale: str) -> str:
    """The key a lifecycle event and a job share when they name the same coordinates: their JSON (ASCII),
    or its SHA-256 when that is long."""
    key = json.dumps([project_id, code, variation, locale])
    return key if len(key) <= _COORDS_KEY_CHARS else "sha256:" + hashlib.sha256(key.encode("ascii")).hexdigest()


def apply_migrations(conn: Any, dialect: Dialect, upto: int | None = None) -> int:
    """Apply the versions the database lacks (up to ``upto``, or all), in the caller's transaction; how many
    it applied. The backends' ``migrate`` wraps it in their own transaction and locking.

    A database with more versions than this build knows raises SchemaTooNew, before anything is written.
    """
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS fulfiller_schema (version INTEGER NOT NULL)")
    current = refuse_newer(cur, dialect)
    versions = migrations(dialect)[:upto]
    for version, statements in enumerate(versions, start=1):
        if version <= current:
            continue
        for sql in statements:
            cur.execute(sql)
        cur.execute(dialect.q("INSERT INTO fulfiller_schema (version) VALUES (?)"), (version,))
    return max(0, len(versions) - current)


# Whether the table of versions exists, by the name CREATE TABLE IF NOT EXISTS would find.
_HAS_VERSIONS = {
    "sqlite": "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'fulfiller_schema'",
    "postgresql": "SELECT count(*) FROM (SELECT to_regclass('fulfiller_schema') AS t) AS found WHERE t IS NOT NULL",
}


def refuse_newer(cur: Any, dialect: Dialect) -> int:
    """The schema version the database records (0 before its first migration), reading only; SchemaTooNew
    when it is past the versions this build knows."""
    if not dialect.execute(cur, _HAS_VERSIONS[dialect.name]).fetchone()[0]:
        return 0
    current = dialect.execute(cur, "SELECT max(version) FROM fulfiller_schema").fetchone()[0] or 0
    known = len(migrations(dialect))
    if current > known:
        raise SchemaTooNew(current, known)
    return int(current)
