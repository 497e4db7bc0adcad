"""Intake under pressure: concurrent duplicates, a crash right after the ack, a store that cannot write.

All of it over real HTTP: the app under uvicorn in a thread, or ``fulfiller serve``
as a subprocess that is SIGKILLed. Nothing here waits with a fixed sleep; the
only waits are bounded polls of a readiness endpoint.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfiller.app import create_app
from fulfiller.config import load_config
from fulfiller.ops.testevent import sample_event, signed_headers
from support.servers import (
    TEST_ADMIN_TOKEN,
    TEST_SECRET,
    ServeProcess,
    admin_jobs,
    serve_in_thread,
    wait_until,
    write_config,
)

REQUESTED = "video.source_requested"
UPLOAD = "https://acct.r2.cloudflarestorage.com/bucket/key?X-Amz-Signature=abc"
CALLBACK = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete"
PATH = "/webhooks/outpost"


def signed(code: str, event_id: str) -> tuple[bytes, dict[str, str]]:
    """A request with its own wait token per event id (a repeated token would be a duplicate request)."""
    callback = CALLBACK.replace("waitpoint_abc", f"waitpoint_{event_id}")
    body = json.dumps(sample_event(UPLOAD, callback, code=code)).encode()
    return body, signed_headers(body, [TEST_SECRET], topic=REQUESTED, event_id=event_id)


def stored(db: Path) -> tuple[set[str], dict[str, int]]:
    """Event ids, and job counts per event id, read straight from the SQLite file."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        events = {r[0] for r in conn.execute("SELECT event_id FROM events")}
        jobs = dict(conn.execute("SELECT event_id, count(*) FROM jobs GROUP BY event_id").fetchall())
        return events, jobs
    finally:
        conn.close()


async def raw_post(host: str, port: int, body: bytes, headers: dict[str, str],
                   connected: asyncio.Barrier) -> int:
    """One POST on its own connection, written only once every sender is connected; the status code.

    Plain HTTP/1.1 over a socket so that 200 requests are truly in flight at once
    (a client pool would queue them or add its own overhead).
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"POST {PATH} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}",
                "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        await connected.wait()
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()  # to EOF: the whole answer
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


# --- 3: 200 concurrent deliveries of one event ------------------------------------------------------


async def test_200_concurrent_deliveries_of_one_event_store_it_once(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    config = load_config(write_config(tmp_path, f"sqlite:///{db}"), env={})
    body, headers = signed("HRT-1212", "evt_concurrent")
    with serve_in_thread(create_app(config)) as url:
        host, port = url.removeprefix("http://").split(":")
        connected = asyncio.Barrier(200)
        statuses = Counter(await asyncio.gather(
            *(raw_post(host, int(port), body, headers, connected) for _ in range(200))
        ))
        assert statuses == {202: 1, 200: 199}, statuses
        events, jobs = stored(db)
        assert events == {"evt_concurrent"}
        assert jobs == {"evt_concurrent": 1}
        with httpx.Client() as client:
            listed = admin_jobs(client, url)
        assert [j["event_id"] for j in listed] == ["evt_concurrent"]


# --- 4: SIGKILL right after the acks --------------------------------------------------------------


async def deliver_all(server: ServeProcess, events: list[tuple[str, bytes, dict[str, str]]], *,
                      parallel: int, kill_after_acks: int | None = None) -> dict[str, int]:
    """Send every event, ``parallel`` at a time; SIGKILL the server the moment the Nth 202 arrives.

    Returns event id -> status for the deliveries that got an answer (those cut by the kill are absent).
    """
    answers: dict[str, int] = {}
    acks = 0
    gate = asyncio.Semaphore(parallel)
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=parallel)

    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:

        async def one(event_id: str, body: bytes, headers: dict[str, str]) -> None:
            nonlocal acks
            async with gate:
                if kill_after_acks is not None and acks >= kill_after_acks:
                    return
                try:
                    response = await client.post(PATH, content=body, headers=headers)
                except httpx.TransportError:
                    return  # cut by the kill: not acked
            answers[event_id] = response.status_code
            if response.status_code == 202:
                acks += 1
                if acks == kill_after_acks:
                    server.kill()

        await asyncio.gather(*(one(*e) for e in events))
    return answers


def make_events(n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    out = []
    for i in range(n):
        event_id = f"evt_{i:04d}_{uuid.uuid4().hex[:8]}"
        body, headers = signed(f"HRT-{i:04d}", event_id)
        out.append((event_id, body, headers))
    return out


def check_all_acked_survived(server: ServeProcess, db: Path, acked: set[str]) -> dict[str, dict[str, Any]]:
    with httpx.Client(timeout=10) as client:
        listed = admin_jobs(client, server.base_url, page=37)  # an odd page size: paging is exercised
    by_event = {j["event_id"]: j for j in listed}
    assert len(by_event) == len(listed), "one job per event"
    missing = acked - set(by_event)
    assert not missing, f"{len(missing)} acked events lost their job: {sorted(missing)[:5]}"
    assert all(by_event[e]["status"] == "queued" for e in acked)
    events, jobs = stored(db)
    assert acked <= events
    assert all(jobs[e] == 1 for e in acked)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    return by_event


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; its new parent reaps it


async def test_sigkill_right_after_the_last_ack_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    config = write_config(tmp_path, f"sqlite:///{db}")
    events = make_events(200)
    server = ServeProcess(config, tmp_path / "serve.log").start()
    try:
        answers = await deliver_all(server, events, parallel=16, kill_after_acks=200)
        assert server.proc is not None and server.proc.returncode == -9  # killed, not stopped
    finally:
        server.kill()
    acked = {e for e, status in answers.items() if status == 202}
    assert len(acked) == 200, Counter(answers.values())
    # Its ingest process sees its input close and exits: nothing is left holding the database.
    assert server.children, "the deliveries were committed by an ingest process"
    wait_until(lambda: not any(alive(pid) for pid in server.children), 10, "the ingest process to exit")

    restarted = ServeProcess(config, tmp_path / "serve2.log").start()
    try:
        by_event = check_all_acked_survived(restarted, db, acked)
        assert set(by_event) == acked
    finally:
        restarted.stop()


async def test_sigkill_mid_stream_then_redelivery_gives_one_job_each(tmp_path: Path) -> None:
    """Killed with deliveries in flight: every ack survives, and Outpost's retries add no duplicates."""
    db = tmp_path / "state.db"
    config = write_config(tmp_path, f"sqlite:///{db}")
    events = make_events(200)
    server = ServeProcess(config, tmp_path / "serve.log").start()
    try:
        answers = await deliver_all(server, events, parallel=16, kill_after_acks=100)
    finally:
        server.kill()
    acked = {e for e, status in answers.items() if status == 202}
    assert len(acked) >= 100
    assert set(answers.values()) == {202}

    restarted = ServeProcess(config, tmp_path / "serve2.log").start()
    try:
        check_all_acked_survived(restarted, db, acked)
        # Outpost redelivers everything it has no 2xx for (and may redeliver the rest).
        again = await deliver_all(restarted, events, parallel=16)
        assert all(again[e] == 200 for e in acked), "an acked event was stored twice"
        assert set(again.values()) <= {200, 202}
        by_event = check_all_acked_survived(restarted, db, {e for e, _, _ in events})
        assert len(by_event) == 200
    finally:
        restarted.stop()


async def test_every_delivery_is_logged_once_in_whole_lines(tmp_path: Path) -> None:
    """The ingest process logs what it took, the server what it refused; both write to one stderr at
    once, and no line may cut into another."""
    db = tmp_path / "state.db"
    config = write_config(tmp_path, f"sqlite:///{db}")
    events = make_events(300)
    forged = [(f"evt_forged_{i}", body, {**headers, "x-outpost-signature": "v0=" + "0" * 64})
              for i, (_, body, headers) in enumerate(make_events(100))]
    with ServeProcess(config, tmp_path / "serve.log") as server:
        mixed = [e for pair in zip(events[:100], forged) for e in pair] + events[100:]
        first = await deliver_all(server, mixed, parallel=32)
        again = await deliver_all(server, events[:50], parallel=32)  # Outpost's redeliveries
    assert Counter(first.values()) == {202: 300, 401: 100}
    assert Counter(again.values()) == {200: 50}
    lines = server.log().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line whole
    deliveries = Counter((p.get("event_id"), p["outcome"], p["http_status"])
                         for p in parsed if p["msg"].startswith("delivery "))
    assert deliveries == Counter(
        [(e, "accepted", 202) for e, _, _ in events] + [(e, "duplicate", 200) for e, _, _ in events[:50]]
        + [(None, "bad_signature", 401)] * 100  # refused before its id could be trusted
    )


# --- 5: a store that cannot write -------------------------------------------------------------------


def test_locked_database_answers_503_acks_nothing_and_recovers(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    config = write_config(tmp_path, f"sqlite:///{db}?busy_timeout_ms=200")
    with ServeProcess(config, tmp_path / "serve.log") as server, httpx.Client(base_url=server.base_url,
                                                                              timeout=10) as client:
        body, headers = signed("HRT-0001", "evt_before")
        assert client.post(PATH, content=body, headers=headers).status_code == 202
        assert client.get("/readyz").status_code == 200

        blocker = sqlite3.connect(db, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            body, headers = signed("HRT-0002", "evt_locked")
            response = client.post(PATH, content=body, headers=headers)
            assert response.status_code == 503
            assert response.json() == {"error": "store unavailable; retry later"}
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "not ready"}  # why is for the admin token only
            assert client.get("/healthz").status_code == 200  # alive, just not ready
            # Nothing of it was stored.
            assert [r[0] for r in blocker.execute("SELECT event_id FROM events")] == ["evt_before"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        assert client.get("/readyz").status_code == 200
        retried = client.post(PATH, content=body, headers=headers)  # Outpost's retry of the same delivery
        assert retried.status_code == 202  # new: the 503 had stored nothing
        assert client.post(PATH, content=body, headers=headers).status_code == 200
        listed = admin_jobs(client, server.base_url)
        assert sorted(j["event_id"] for j in listed) == ["evt_before", "evt_locked"]

    log = server.log()
    lines = server.log_lines()
    failures = [r for r in lines if r.get("level") == "error" and r.get("event_id") == "evt_locked"]
    assert failures, log
    assert "store cannot commit" in failures[0]["msg"]
    assert "locked" in failures[0]["msg"]
    outcomes = [r for r in lines if r.get("outcome") == "store_unavailable"]
    assert outcomes and outcomes[0]["http_status"] == 503 and outcomes[0]["event_id"] == "evt_locked"
    assert TEST_SECRET not in log
    assert TEST_ADMIN_TOKEN not in log
    assert headers["x-outpost-signature"].removeprefix("v0=") not in log


@pytest.mark.parametrize("concurrent", [8])
async def test_locked_database_fails_a_whole_batch_with_503_then_all_are_stored(
    tmp_path: Path, concurrent: int
) -> None:
    """Deliveries sharing a failed group commit are all refused (none acked), and all land on retry."""
    db = tmp_path / "state.db"
    config = load_config(write_config(tmp_path, f"sqlite:///{db}?busy_timeout_ms=200"), env={})
    events = [signed(f"HRT-{i}", f"evt_batch_{i}") for i in range(concurrent)]
    with serve_in_thread(create_app(config)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            assert (await client.get("/readyz")).status_code == 200
            blocker = sqlite3.connect(db, isolation_level=None)
            try:
                blocker.execute("BEGIN EXCLUSIVE")
                first = await asyncio.gather(*(client.post(PATH, content=b, headers=h) for b, h in events))
                assert [r.status_code for r in first] == [503] * concurrent
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            second = await asyncio.gather(*(client.post(PATH, content=b, headers=h) for b, h in events))
            assert [r.status_code for r in second] == [202] * concurrent
    events_stored, jobs = stored(db)
    assert events_stored == {f"evt_batch_{i}" for i in range(concurrent)}
    assert set(jobs.values()) == {1}
