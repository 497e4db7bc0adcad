"""Acceptance 3 of the fulfillment engine: a crash mid-upload loses nothing and duplicates nothing.

``fulfiller serve`` is SIGKILLed while it streams a 64 MiB master to the
platform double (slowed down so the kill lands mid-stream, detected by the
bytes the double has received, not by a sleep). Started again on the same
state with a short lease, it takes the job up once the dead worker's lease
lapses, uploads the whole master from the first byte, and completes the wait
token exactly once. The cut PUT is never kept as the object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.odd_jobs import NESTED, job_row
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

MEDIA = Path(__file__).parent / "media"
MASTER_BYTES = 64 * 1024 * 1024
SLOW_BYTES_PER_S = 8 * 1024 * 1024  # ~8 s for the whole master: the kill lands well inside it
KILL_AFTER_BYTES = 4 * 1024 * 1024
LEASE_S = 2


def write_master(path: Path) -> str:
    """A 64 MiB "MP4": a real MP4 head (so it sniffs as video/mp4), then random bytes. Its sha256 (hex)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    with path.open("wb") as f:
        chunk = (MEDIA / "9x16.mp4").read_bytes()
        left = MASTER_BYTES
        while left > 0:
            chunk = chunk[:left]
            f.write(chunk)
            hasher.update(chunk)
            left -= len(chunk)
            chunk = os.urandom(1 << 20)
    assert path.stat().st_size == MASTER_BYTES
    return hasher.hexdigest()


def test_sigkill_mid_upload_then_restart_completes_once(tmp_path: Path) -> None:
    code = f"CRASH-{uuid.uuid4().hex[:8].upper()}"
    masters = tmp_path / "masters"
    digest = write_master(masters / code / "v1" / "en" / "9x16.mp4")

    with run_platform(tmp_path / "platform") as platform:
        host = platform.base_url.removeprefix("http://")
        config = {
            "worker": fast_worker([host], [host], concurrency=2, lease_s=LEASE_S, http_timeout_s=30),
            "catalogs": {"local": {"type": "local", "root": str(masters)}},
            "routes": [{"codes": ["*"], "catalog": "local"}],
        }
        key = storage_key(code, "9x16")
        token = new_token()
        event = source_requested(code, aspect="9x16", key=key, upload_url=platform.presign(key),
                                 callback_url=platform.callback_url(token))
        proc = FulfillerProcess(tmp_path / "fulfiller", config)
        try:
            platform.slow_uploads(SLOW_BYTES_PER_S)
            proc.start()
            job_id = proc.deliver(event)
            platform.wait_for_bytes(key, KILL_AFTER_BYTES, timeout=30)
            proc.kill()
            platform.slow_uploads(None)

            # The double saw the connection die; nothing was kept, nothing was called back.
            platform.wait_for(lambda p: p.uploads(key)[0].outcome != "in_flight", timeout=10,
                              what="the first PUT to end")
            first = platform.uploads(key)[0]
            assert first.outcome == "disconnected", first
            assert KILL_AFTER_BYTES <= first.received < MASTER_BYTES
            assert platform.stored(key) is None
            assert platform.callbacks(token) == []

            proc.start()  # same config, same state
            job = proc.wait_for_job(job_id, timeout=60)
        finally:
            proc.close()

        assert job["status"] == "completed", job
        assert job["runs"] == 2  # taken by the dead worker, then once more after its lease lapsed
        puts = platform.uploads(key)
        assert [u.outcome for u in puts] == ["disconnected", "stored"]
        assert puts[1].content_length == MASTER_BYTES and puts[1].transfer_encoding is None
        stored = platform.stored(key)
        assert stored is not None
        assert (stored.size, stored.sha256, stored.content_type) == (MASTER_BYTES, digest, "video/mp4")
        with stored.path.open("rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == digest
        [callback] = platform.callbacks(token)
        assert callback.status == 202
        assert callback.body == {"storageKey": key, "extension": "mp4", "contentHash": f"sha256:{digest}"}
        assert (job["content_hash"], job["bytes"]) == (f"sha256:{digest}", MASTER_BYTES)
        # The killed run left no upload attempt behind (it died inside it); the second run made one.
        assert [a["http_status"] for a in attempts(job, "upload")] == [200]
        assert [a["http_status"] for a in attempts(job, "callback")] == [202]


# --- poison pills: one job never stops a worker ---------------------------------------------------------
# Rows written straight into the state (see support.odd_jobs) while ``fulfiller serve`` runs.


def small_stack(tmp_path: Path, platform: PlatformDouble) -> FulfillerProcess:
    """``fulfiller serve`` with a local catalog (``request`` puts each code's master there)."""
    host = platform.base_url.removeprefix("http://")
    masters = tmp_path / "masters"
    return FulfillerProcess(tmp_path / "fulfiller", {
        "worker": fast_worker([host], [host], lease_s=30),
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    })


def request(platform: PlatformDouble, code: str, token: str, tmp_path: Path) -> dict[str, Any]:
    master = tmp_path / "masters" / code / "v1" / "en" / "9x16.mp4"
    master.parent.mkdir(parents=True, exist_ok=True)
    master.write_bytes((MEDIA / "9x16.mp4").read_bytes())
    key = storage_key(code, "9x16")
    return source_requested(code, aspect="9x16", key=key, upload_url=platform.presign(key),
                            callback_url=platform.callback_url(token))


def insert_jobs(proc: FulfillerProcess, event_id: str, rows: list[dict[str, Any]]) -> list[str]:
    """Job rows as given (older than any other job), under a stored event; their ids."""
    ids = []
    with contextlib.closing(sqlite3.connect(proc.workdir / "fulfiller.db", timeout=10)) as db, db:
        for row in rows:
            job_id, sql, values = job_row(event_id, created_at=time.time() - 60, **row)
            db.execute(sql, values)
            ids.append(job_id)
    return ids


def test_a_job_that_cannot_be_loaded_or_run_ends_failed_and_the_worker_goes_on(tmp_path: Path) -> None:
    with run_platform(tmp_path / "platform") as platform, small_stack(tmp_path, platform) as proc:
        first = proc.wait_for_job(proc.deliver(request(platform, "POISON-0", new_token(), tmp_path)))
        assert first["status"] == "completed", first
        odd_deadline = request(platform, "POISON-1", new_token(), tmp_path)
        poisoned = dict(zip(insert_jobs(proc, first["event_id"], [
            {"payload": NESTED},
            {"payload": "{not json"},
            # Decodes, but its deadline is not a number: the engine's comparison raises.
            {"payload": json.dumps(odd_deadline), "expires_at": "soon"},
        ]), ["RecursionError", "JSONDecodeError", "TypeError"]))
        after = proc.deliver(request(platform, "POISON-2", new_token(), tmp_path))

        assert proc.wait_for_job(after)["status"] == "completed"
        for job_id, error in poisoned.items():
            job = proc.wait_for_job(job_id)
            assert job["status"] == "failed", job
            assert job["error"].startswith(f"internal error: {error}: "), job
        assert platform.callbacks(odd_deadline["fulfillment"]["completeCallbackUrl"].split("/")[-2]) == []
        assert proc.http.get(f"{proc.base_url}/readyz").status_code == 200
        listed = proc.admin("GET", "/admin/jobs", params={"limit": 500})
        assert listed.status_code == 200 and set(poisoned) <= {j["id"] for j in listed.json()["jobs"]}
        lines = proc.serve.log_lines()
    for job_id in poisoned:  # each with its traceback in the log
        assert any(r.get("job_id") == job_id and "Traceback" in r.get("exc", "") for r in lines), job_id


def test_a_job_that_took_its_worker_down_three_times_ends_failed_unrun(tmp_path: Path) -> None:
    with run_platform(tmp_path / "platform") as platform, small_stack(tmp_path, platform) as proc:
        first = proc.wait_for_job(proc.deliver(request(platform, "CRASHY-0", new_token(), tmp_path)))
        token = new_token()
        # Running, its lease lapsed: its worker died holding it, for the third time.
        [job_id] = insert_jobs(proc, first["event_id"], [{
            "payload": json.dumps(request(platform, "CRASHY-1", token, tmp_path)), "status": "running",
            "lease_owner": "gone:1:dead", "lease_until": time.time() - 1, "runs": 3, "crashes": 2,
        }])
        job = proc.wait_for_job(job_id)
        log = proc.log_containing("crashed 3 times")
    assert (job["status"], job["error"], job["crashes"], job["runs"]) == ("failed", "crashed 3 times", 3, 3), job
    assert platform.callbacks(token) == [] and platform.uploads(storage_key("CRASHY-1", "9x16")) == []
    assert job_id in log
