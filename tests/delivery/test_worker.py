"""The worker loop on SIGTERM: in-flight work finishes within the grace period, the rest goes back to the queue.

A real ``fulfiller serve`` streams a master to the platform double, slowed so
the signal lands mid-upload (detected by the bytes the double has received).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from support.fulfiller_proc import FulfillerProcess, fast_worker
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

MEDIA = Path(__file__).resolve().parents[1] / "media"
MASTER_BYTES = 4 * 1024 * 1024
GRACE_S = 2.0
# uvicorn re-raises the signal once its shutdown is done, so a graceful stop exits "by SIGTERM".
GRACEFUL = (0, -signal.SIGTERM)


def write_master(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (MEDIA / "9x16.mp4").read_bytes()
    path.write_bytes(head + os.urandom(MASTER_BYTES - len(head)))


def config(masters: Path, platform: PlatformDouble) -> dict[str, Any]:
    host = platform.base_url.removeprefix("http://")
    return {
        "worker": fast_worker([host], [host], concurrency=2, lease_s=30, http_timeout_s=30, shutdown_grace_s=GRACE_S),
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }


def start_upload(tmp_path: Path, platform: PlatformDouble, bytes_per_s: float) -> tuple[FulfillerProcess, str, str, str]:
    code = f"TERM-{uuid.uuid4().hex[:8].upper()}"
    write_master(tmp_path / "masters" / code / "v1" / "en" / "9x16.mp4")
    key, token = storage_key(code, "9x16"), new_token()
    event = source_requested(code, aspect="9x16", key=key, upload_url=platform.presign(key),
                             callback_url=platform.callback_url(token))
    proc = FulfillerProcess(tmp_path / "fulfiller", config(tmp_path / "masters", platform))
    platform.slow_uploads(bytes_per_s)
    proc.start()
    job_id = proc.deliver(event)
    platform.wait_for_bytes(key, 256 * 1024, timeout=30)
    return proc, job_id, key, token


def test_sigterm_lets_an_upload_that_fits_the_grace_period_finish(tmp_path: Path) -> None:
    with run_platform(tmp_path / "platform") as platform:
        # ~1 s for the whole master: well inside the 2 s grace.
        proc, job_id, key, token = start_upload(tmp_path, platform, MASTER_BYTES / 1.0)
        try:
            assert proc.stop() in GRACEFUL
            assert "Application shutdown complete" in proc.log_text()
            assert [u.outcome for u in platform.uploads(key)] == ["stored"]
            assert [c.status for c in platform.callbacks(token)] == [202]
            proc.start()
            assert proc.job(job_id)["status"] == "completed"
            assert proc.job(job_id)["runs"] == 1
        finally:
            proc.close()


def test_sigterm_releases_an_upload_that_outlasts_the_grace_period(tmp_path: Path) -> None:
    with run_platform(tmp_path / "platform") as platform:
        # ~20 s for the whole master: the grace period ends long before.
        proc, job_id, key, token = start_upload(tmp_path, platform, MASTER_BYTES / 20)
        try:
            signalled = time.monotonic()
            assert proc.stop() in GRACEFUL
            assert "job released at shutdown" in proc.log_text()
            assert time.monotonic() - signalled < GRACE_S + 5  # it did not wait for the upload
            assert platform.callbacks(token) == []
            assert platform.stored(key) is None

            platform.slow_uploads(None)
            proc.start()  # back in the queue at once: no lease to wait out
            job = proc.wait_for_job(job_id, timeout=20)
        finally:
            proc.close()
    assert job["status"] == "completed", job
    assert job["runs"] == 2
    assert [c.status for c in platform.callbacks(token)] == [202]
    assert [u.outcome for u in platform.uploads(key)][-1] == "stored"
    # The try the grace period cut short is on record as cancelled, never as a success.
    assert [(a["step"], a["error"]) for a in job["attempts"]] == [
        ("resolve", None), ("upload", "cancelled"), ("resolve", None), ("upload", None), ("callback", None)]
