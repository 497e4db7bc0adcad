"""The app's own routes: ``/readyz`` says whether this process can do its work, and why only to the operator.

The app runs in process (``httpx.ASGITransport``, lifespan included) on a real
store: SQLite with real workers, or with its ingest child hung, and a real
PostgreSQL that stops taking connections.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager, closing
from pathlib import Path

import httpx
from starlette.applications import Starlette

from fulfiller.app import create_app
from fulfiller.config import Config, parse_config
from fulfiller.delivery.worker import worker_service
from fulfiller.ops.testevent import signed_headers
from fulfiller.store.sqlite import SQLiteStore
from store.builders import REQUESTED, request_body
from support.ingest_child import stopped_child
from support.postgres import PgCluster, pg_cluster, pg_database, reset_schema

__all__ = ["pg_cluster", "pg_database"]

SECRET = "whsec_app-tests-secret-7d6e5f"
TOKEN = "admin-token-for-readyz-0b9c8d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOT_READY = {"status": "not ready"}
DEADLINE_S = 1.0  # the ingest deadline of the hung-child test (the product's is a few seconds)


def config_for(tmp_path: Path, state: str) -> Config:
    raw = {
        "state": state,
        "receiver": {"secrets": [SECRET]},
        "admin": {"token": TOKEN},
        "worker": {"poll_interval_s": 0.05},
        "catalogs": {"local": {"type": "local", "root": str(tmp_path)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    return parse_config(json.dumps(raw), env={})


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fulfiller.test") as c:
            yield c


async def test_readyz_answers_503_once_the_worker_loop_has_stopped(tmp_path: Path) -> None:
    config = config_for(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    app = create_app(config, service=worker_service(config))
    async with running(app) as client:
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        # The loop ends while the app runs on, as a crash would end it.
        [loop] = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "WorkerPool.run"]
        loop.cancel()
        await asyncio.wait([loop])

        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            anonymous = await client.get("/readyz", headers=headers)
            assert (anonymous.status_code, anonymous.json()) == (503, NOT_READY)
        operator = await client.get("/readyz", headers=AUTH)
        assert (operator.status_code, operator.json()) == (503, {**NOT_READY, "reason": "the worker loop has stopped"})
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready


async def test_readyz_tells_the_store_error_only_to_the_operator(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: str
) -> None:
    reset_schema(pg_database)
    dbname = pg_database.rsplit("/", 1)[1]
    app = create_app(config_for(tmp_path, f"{pg_database}?connect_timeout=3"))
    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        with pg_cluster.admin() as conn:  # the database refuses connections; the store's are cut
            conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        try:
            anonymous = await client.get("/readyz")
            operator = await client.get("/readyz", headers=AUTH)
        finally:
            with pg_cluster.admin() as conn:
                conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert (anonymous.status_code, anonymous.json()) == (503, NOT_READY)
    for detail in (dbname, pg_cluster.user, pg_cluster.host, str(pg_cluster.port), "postgresql"):
        assert detail not in anonymous.text
    assert operator.status_code == 503
    assert operator.json()["status"] == "not ready" and dbname in operator.json()["reason"]


async def test_a_hung_ingest_child_is_answered_503_in_time_and_readyz_is_not_ready(tmp_path: Path) -> None:
    """A stopped ingest child (or one stuck in an fsync): deliveries and ``/readyz`` answer 503 within the
    ingest deadline instead of waiting on it, the child is replaced, and the sender's retry is stored."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = SQLiteStore(url, ingest_deadline_s=DEADLINE_S)
    store.ingester.restart_after_s = 0.0
    app = create_app(config_for(tmp_path, url), store=store)

    def post(client: httpx.AsyncClient, event_id: str) -> Awaitable[httpx.Response]:
        body = json.dumps(request_body(event_id.upper().replace("_", "-"))).encode()
        return client.post("/webhooks/outpost", content=body,
                           headers=signed_headers(body, [SECRET], topic=REQUESTED, event_id=event_id))

    async with running(app) as client:
        assert (await post(client, "evt_first")).status_code == 202  # the child runs
        with stopped_child(store):
            started = time.monotonic()
            operator = await client.get("/readyz", headers=AUTH)
            assert time.monotonic() - started < DEADLINE_S + 5
        assert operator.status_code == 503 and "did not commit within" in operator.json()["reason"]
        assert (await client.get("/readyz")).status_code == 200  # on a new child

        with stopped_child(store):
            started = time.monotonic()
            assert (await post(client, "evt_during")).status_code == 503
            assert time.monotonic() - started < DEADLINE_S + 5
        assert (await post(client, "evt_during")).status_code == 202  # the sender's retry, to a new child
    with closing(sqlite3.connect(store.path)) as db:
        assert {row[0] for row in db.execute("SELECT event_id FROM events")} == {"evt_first", "evt_during"}
