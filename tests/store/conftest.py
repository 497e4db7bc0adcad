"""The store suite runs once per backend: SQLite in a temporary file, PostgreSQL in a real server.

PostgreSQL comes from ``support.postgres``: a fresh database per test module,
its tables dropped before each test so every test starts from migrations.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from fulfiller.store import Store, open_store
from support.postgres import PgCluster, pg_cluster, pg_database, pg_private_cluster, reset_schema

__all__ = ["pg_cluster", "pg_database", "pg_private_cluster"]

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_database")
    reset_schema(url)
    return url


StoreFactory = Callable[..., Awaitable[Store]]


@pytest.fixture
async def make_store(store_url: str) -> AsyncIterator[StoreFactory]:
    """Opens stores (on ``store_url`` unless told otherwise) and closes them all after the test."""
    opened: list[Store] = []

    async def make(url: str | None = None) -> Store:
        store = open_store(url or store_url)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


@pytest.fixture
def outage(
    backend: str, store_url: str, request: pytest.FixtureRequest
) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """A context in which the store's database cannot be reached (PostgreSQL) or committed to (SQLite)."""

    @contextlib.contextmanager
    def sqlite_locked() -> Iterator[None]:
        # Another process holds the write lock; our writes give up after busy_timeout_ms.
        path = store_url.removeprefix("sqlite:///").split("?", 1)[0]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()

    @contextlib.contextmanager
    def postgres_refusing() -> Iterator[None]:
        # The database refuses new connections and the store's existing ones are cut.
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        dbname = store_url.rsplit("/", 1)[1]
        with cluster.admin() as conn:
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        try:
            yield
        finally:
            with cluster.admin() as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')

    return sqlite_locked if backend == "sqlite" else postgres_refusing
