"""The schema guard, on SQLite and PostgreSQL: a state that a newer build migrated (its schema version is
past this build's) is refused at start, so a rolled-back build never writes into a schema it does not know.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest

from fulfiller.preflight import refuse_newer_schema
from fulfiller.store import open_store
from fulfiller.store.schema import SchemaTooNew, migrations
from fulfiller.store.sqlite import SQLITE
from store.conftest import StoreFactory
from support.servers import fulfiller_command, write_config

KNOWN = len(migrations(SQLITE))


def run_sql(store_url: str, sql: str) -> list[tuple[object, ...]]:
    """``sql`` on the state, from outside the store (as a newer build, or an operator, would)."""
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    with psycopg.connect(store_url, autocommit=True) as pg:
        cur = pg.execute(sql)
        return cur.fetchall() if cur.description else []


async def migrated_by_a_newer_build(make_store: StoreFactory, store_url: str) -> None:
    """The state as this build leaves it, then one more version recorded, as a newer build records one."""
    store = await make_store()
    await store.close()
    run_sql(store_url, f"INSERT INTO fulfiller_schema (version) VALUES ({KNOWN + 1})")


async def test_a_newer_schema_is_refused_and_left_as_it_is(make_store: StoreFactory, store_url: str) -> None:
    await migrated_by_a_newer_build(make_store, store_url)
    tables = run_sql(store_url, "SELECT count(*) FROM fulfiller_schema")

    store = open_store(store_url)
    with pytest.raises(SchemaTooNew) as refused:
        await store.open()
    await store.close()
    assert (refused.value.found, refused.value.known) == (KNOWN + 1, KNOWN)
    assert refused.value.errors == [("state", f"database schema version {KNOWN + 1} is newer than this fulfiller"
                                              f" ({KNOWN})")]
    assert run_sql(store_url, "SELECT count(*) FROM fulfiller_schema") == tables


async def test_the_commands_that_open_the_state_exit_2_naming_both_versions(
        make_store: StoreFactory, store_url: str, tmp_path: Path) -> None:
    await migrated_by_a_newer_build(make_store, store_url)
    config = write_config(tmp_path, store_url)
    for command in (["jobs"], ["worker"], ["serve", "--no-worker"], ["check-config"]):
        done = subprocess.run([*fulfiller_command(), *command, "--config", str(config)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert f"database schema version {KNOWN + 1} is newer than this fulfiller ({KNOWN})" in done.stderr
        assert "Traceback" not in done.stderr


async def test_the_schema_this_build_knows_opens(make_store: StoreFactory, store_url: str) -> None:
    """Its own version, reached by any number of starts, is never refused."""
    for _ in range(2):
        store = await make_store()
        await store.close()
    assert run_sql(store_url, "SELECT max(version) FROM fulfiller_schema") == [(KNOWN,)]


async def test_serve_can_refuse_before_its_server_starts(make_store: StoreFactory, store_url: str,
                                                         tmp_path: Path) -> None:
    """``preflight.refuse_newer_schema`` only reads: a state not there yet stays absent, this build's
    schema passes, a newer one is refused."""
    missing = tmp_path / "not-yet" / "state.db"
    refuse_newer_schema(open_store(f"sqlite:///{missing}"))
    assert not missing.parent.exists()
    refuse_newer_schema(open_store(store_url))  # not migrated yet
    await migrated_by_a_newer_build(make_store, store_url)
    with pytest.raises(SchemaTooNew, match=f"version {KNOWN + 1} is newer than this fulfiller \\({KNOWN}\\)"):
        refuse_newer_schema(open_store(store_url))
    run_sql(store_url, f"DELETE FROM fulfiller_schema WHERE version = {KNOWN + 1}")
    refuse_newer_schema(open_store(store_url))
