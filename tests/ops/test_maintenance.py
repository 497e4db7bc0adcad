"""``fulfiller prune`` and ``fulfiller backup`` (``ops.maintenance``), on SQLite and a real PostgreSQL where
they apply; the backup taken while a real ``fulfiller serve`` keeps acking deliveries.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from fulfiller.config import Config, load_config
from fulfiller.ops import maintenance
from fulfiller.ops.testevent import signed_headers
from fulfiller.store import open_store
from store.builders import PROJECT, REQUESTED, event, request_body, requested
from store.conftest import backend, pg_cluster, pg_database, store_url
from support.servers import TEST_SECRET, ServeProcess, fulfiller_command, wait_until, write_config

__all__ = ["backend", "pg_cluster", "pg_database", "store_url"]  # the store suite's fixtures: SQLite, PostgreSQL

DAY = 86400.0
OTHER = "video.something_new"


def config_file(tmp_path: Path, state: str, keep_days: float = 30) -> Path:
    path = write_config(tmp_path, state)
    path.write_text(json.dumps(json.loads(path.read_text()) | {"retention": {"keep_days": keep_days}}))
    return path


async def seed(url: str) -> None:
    """Forty days ago: a request found invalid (a finished job) and an event of another topic; today: an
    invalid request and a queued one."""
    store = open_store(url)
    await store.open()
    try:
        old = time.time() - 40 * DAY
        for stored in (event("evt-old", REQUESTED, {"projectId": PROJECT, "creative": {}}, old),
                       event("evt-old-other", OTHER, {"a": 1}, old),
                       event("evt-new", REQUESTED, {"projectId": PROJECT, "creative": {}}),
                       requested("evt-queued", code="QUEUED")):
            assert await store.ingest_event(stored)
    finally:
        await store.close()


async def stored_events(url: str) -> list[str]:
    store = open_store(url)
    await store.open()
    try:
        return sorted(j.event_id for j in await store.list_jobs(limit=100_000))
    finally:
        await store.close()


def test_a_dry_run_counts_then_prune_deletes_what_retention_would(store_url: str, tmp_path: Path) -> None:
    asyncio.run(seed(store_url))
    config = load_config(config_file(tmp_path, store_url))
    out: list[str] = []

    assert maintenance.prune(config, None, True, out.append) == 0
    assert out == ["would delete 1 job(s) and 2 event(s) older than 30 days"]
    assert asyncio.run(stored_events(store_url)) == ["evt-new", "evt-old", "evt-queued"]

    assert maintenance.prune(config, None, False, out.append) == 0
    assert out[-1] == "deleted 1 job(s) and 2 event(s) older than 30 days"
    assert asyncio.run(stored_events(store_url)) == ["evt-new", "evt-queued"]

    # --older-than 0: every finished job, however recent; a queued one stays.
    assert maintenance.prune(config, 0, False, out.append) == 0
    assert out[-1] == "deleted 1 job(s) and 1 event(s) older than 0 days"
    assert asyncio.run(stored_events(store_url)) == ["evt-queued"]


def test_keep_days_0_is_retention_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    asyncio.run(seed(url))
    out: list[str] = []
    assert maintenance.prune(load_config(config_file(tmp_path, url, keep_days=0)), None, False, out.append) == 0
    assert len(out) == 1 and "retention is off" in out[0]
    assert asyncio.run(stored_events(url)) == ["evt-new", "evt-old", "evt-queued"]


def test_the_prune_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    asyncio.run(seed(url))
    config = str(config_file(tmp_path, url))

    def prune(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*fulfiller_command(), "prune", "--config", config, *args], capture_output=True,
                              text=True, timeout=60)

    dry = prune("--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "would delete 1 job(s) and 2 event(s) older than 30 days\n")
    assert asyncio.run(stored_events(url)) == ["evt-new", "evt-old", "evt-queued"]
    done = prune("--older-than", "10")
    assert (done.returncode, done.stdout) == (0, "deleted 1 job(s) and 2 event(s) older than 10 days\n")
    assert asyncio.run(stored_events(url)) == ["evt-new", "evt-queued"]


def test_backup_while_serve_keeps_acking_copies_every_job_acked_before_it(tmp_path: Path) -> None:
    state = tmp_path / "state" / "fulfiller.db"
    config_path = write_config(tmp_path, f"sqlite:///{state}")
    backup = tmp_path / "backups" / "fulfiller.db"
    backup.parent.mkdir()
    acked: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    with ServeProcess(config_path, tmp_path / "serve.log") as serve:
        def send() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set() and not failures:
                    event_id = f"evt-{len(acked)}"
                    body = json.dumps(request_body(f"BK-{len(acked)}")).encode()
                    headers = signed_headers(body, [TEST_SECRET], topic=REQUESTED, event_id=event_id)
                    answer = client.post(f"{serve.base_url}/webhooks/outpost", content=body, headers=headers)
                    if answer.status_code != 202:
                        failures.append(f"{answer.status_code} {answer.text}")
                    else:
                        acked.append(event_id)

        sender = threading.Thread(target=send, name="sender")
        sender.start()
        try:
            wait_until(lambda: len(acked) >= 200 or bool(failures), 30, "200 acked deliveries")
            before = list(acked)
            out: list[str] = []
            assert maintenance.backup(load_config(config_path), str(backup), out.append) == 0
            after = len(acked)
            wait_until(lambda: len(acked) >= after + 50 or bool(failures), 30, "deliveries acked after the backup")
        finally:
            stop.set()
            sender.join(30)
        assert not failures, failures
        assert serve.proc is not None and serve.proc.poll() is None  # serving all along

    copied = asyncio.run(stored_events(f"sqlite:///{backup}"))
    assert set(before) <= set(copied)
    assert set(copied) <= set(acked)
    said = rf"backed up {re.escape(str(state))} to {re.escape(str(backup))}: (\d+) job\(s\), integrity ok"
    found = re.fullmatch(said, out[0])
    assert found is not None and int(found.group(1)) == len(copied)
    assert sorted(p.name for p in backup.parent.iterdir()) == ["fulfiller.db"]  # one file, nothing left beside it


def test_backup_refuses_to_overwrite_the_state_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    asyncio.run(seed(url))
    out: list[str] = []
    assert maintenance.backup(load_config(config_file(tmp_path, url)), str(tmp_path / "state.db"), out.append) == 2
    assert "is the state itself" in out[0]
    assert asyncio.run(stored_events(url)) == ["evt-new", "evt-old", "evt-queued"]


def test_backup_of_postgresql_points_to_pg_dump(pg_database: str, tmp_path: Path) -> None:
    out: list[str] = []
    config: Config = load_config(config_file(tmp_path, pg_database))
    assert maintenance.backup(config, str(tmp_path / "copy.db"), out.append) == 2
    assert "pg_dump" in out[0]
    assert not (tmp_path / "copy.db").exists()


def test_a_backup_goes_into_an_existing_folder_and_replaces_the_last_one_whole(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    asyncio.run(seed(url))
    config = load_config(config_file(tmp_path, url))
    target = tmp_path / "backups" / "state.db"
    out: list[str] = []
    assert maintenance.backup(config, str(target), out.append) == 2
    assert out == [f"{target.parent} is not a directory"]
    target.parent.mkdir()
    assert maintenance.backup(config, str(target), out.append) == 0
    assert out[-1].endswith(": 3 job(s), integrity ok")
    asyncio.run(add_request(url, "evt-later"))
    assert maintenance.backup(config, str(target), out.append) == 0
    assert out[-1].endswith(": 4 job(s), integrity ok")
    assert asyncio.run(stored_events(f"sqlite:///{target}")) == ["evt-later", "evt-new", "evt-old", "evt-queued"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.db"]


async def add_request(url: str, event_id: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        assert await store.ingest_event(requested(event_id, code="LATER"))
    finally:
        await store.close()
