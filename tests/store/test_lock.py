"""SQLite state is one serving process's: a second ``serve`` or ``worker`` on the file refuses to start,
naming the holder, while commands that only read or change a job now and then run beside it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fulfiller.config import ConfigError
from fulfiller.intake.admission import Delivery
from fulfiller.store.base import Requeue
from fulfiller.store.lock import StateLocked
from fulfiller.store.sqlite import SQLiteStore
from store.builders import REQUESTED, request_body

# A serving process: it opens the store, takes a delivery (so its ingest child runs), says so, and serves
# until its stdin closes.
HOLDER = textwrap.dedent("""
    import asyncio, json, sys, time
    from fulfiller.intake.admission import Delivery
    from fulfiller.store.sqlite import SQLiteStore

    async def main(url, body):
        store = SQLiteStore(url, serving=True)
        await store.open()
        try:
            assert await store.ingest(Delivery("evt-holder", "video.source_requested", body.encode(), time.time()))
            print("serving", flush=True)
            await asyncio.to_thread(sys.stdin.read)
        finally:
            await store.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def delivery(event_id: str) -> Delivery:
    return Delivery(event_id, REQUESTED, json.dumps(request_body(event_id)).encode(), time.time())


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'fulfiller.db'}"


@pytest.fixture
def holder(url: str) -> Iterator[subprocess.Popen[str]]:
    """Another process serving from ``url``, its ingest child started."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, json.dumps(request_body("HOLDER"))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "serving\n", "the holder did not start"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_a_second_serving_process_is_refused_naming_the_holder(url: str, holder: subprocess.Popen[str]) -> None:
    with pytest.raises(StateLocked) as refused:
        SQLiteStore(url, serving=True)
    message = str(refused.value)
    assert f"pid {holder.pid} on {socket.gethostname()}" in message
    assert url.removeprefix("sqlite:///") in message
    # The command line answers it as it answers any unusable config: exit 2, the reason under "state".
    assert isinstance(refused.value, ConfigError)
    assert [path for path, _ in refused.value.errors] == ["state"]


def test_a_killed_holder_leaves_no_stale_lock(url: str, holder: subprocess.Popen[str]) -> None:
    holder.kill()
    holder.wait()
    store = SQLiteStore(url, serving=True)  # no error: the kernel let the lock go with the process
    assert store.state_lock is not None and store.state_lock.held


async def test_commands_that_do_not_serve_work_beside_the_holder(url: str, holder: subprocess.Popen[str]) -> None:
    """``fulfiller jobs`` and ``rerun`` open the store without serving: they read and write beside it."""
    store = SQLiteStore(url)
    await store.open()
    try:
        [job] = await store.list_jobs()
        assert job.code == "HOLDER"
        assert await store.requeue(job.id) == Requeue.QUEUED  # a write, through its own writer
    finally:
        await store.close()


async def test_the_lock_is_held_from_start_to_close_and_taken_again_on_open(url: str) -> None:
    store = SQLiteStore(url, serving=True)  # taken before any server starts
    with pytest.raises(StateLocked):
        SQLiteStore(url, serving=True)
    await store.open()
    assert await store.ingest(delivery("evt-1")) is True  # its own ingest child does not trip it
    await store.ping()
    await store.close()

    other = SQLiteStore(url, serving=True)  # free once closed
    with pytest.raises(StateLocked):
        await store.open()  # the first store opened again waits its turn
    await other.close()
    await store.open()
    try:
        with pytest.raises(StateLocked):
            SQLiteStore(url, serving=True)
    finally:
        await store.close()
