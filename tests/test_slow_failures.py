"""Slow failures and operator control, through a real ``fulfiller serve``: retries wait in the queue, not in
a worker's slot; operators can skip a job that is retrying or running; SIGTERM does not wait for jobs that
are only waiting; a retry finds its master again; a worker that cannot renew its lease stops.

The platform is the double of ``support.platform`` (its upload and callback answer what each case
scripts); the S3 catalog is moto. Waits poll a condition against a deadline.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.moto_server import DUMMY_AWS_ENV, aws_test_env, moto_endpoint  # noqa: F401  (fixtures)
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key
from support.postgres import pg_cluster, pg_database, reset_schema  # noqa: F401  (fixtures)

MEDIA = Path(__file__).parent / "media"
MASTER = (MEDIA / "9x16.mp4").read_bytes()
FOREVER = 1_000_000  # faults that outlast the test
# uvicorn re-raises the signal once its shutdown is done, so a graceful stop exits "by SIGTERM".
GRACEFUL = (0, -signal.SIGTERM)


class Case:
    """A platform double, a local catalog and a ``fulfiller serve`` configured for them."""

    def __init__(self, tmp: Path, platform: PlatformDouble, *, state: str | None = None,
                 catalogs: dict[str, Any] | None = None, env: dict[str, str] | None = None, **worker: Any):
        self.platform = platform
        self.masters = tmp / "masters"
        self.masters.mkdir(parents=True, exist_ok=True)
        host = urlsplit(platform.base_url).netloc
        config: dict[str, Any] = {
            "worker": fast_worker([host], [host], **worker),
            "catalogs": catalogs or {"local": {"type": "local", "root": str(self.masters)}},
            "routes": [{"codes": ["*"], "catalog": next(iter(catalogs or {"local": None}))}],
        }
        if state:
            config["state"] = state
        self.proc = FulfillerProcess(tmp / "fulfiller", config, env=env)

    def request(self, code: str | None = None, master: bytes | None = MASTER) -> tuple[dict[str, Any], str, str]:
        """A 9x16 request for a new creative whose master (if any) is in the local catalog: event, key, token."""
        code = code or f"SLOW-{uuid.uuid4().hex[:8].upper()}"
        if master is not None:
            path = self.masters / code / "v1" / "en" / "9x16.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(master)
        key, token = storage_key(code, "9x16"), new_token()
        event = source_requested(code, aspect="9x16", key=key, upload_url=self.platform.presign(key),
                                 callback_url=self.platform.callback_url(token))
        return event, key, token

    def skip(self, job_id: str, reason: str) -> int:
        return self.proc.admin("POST", f"/admin/jobs/{job_id}/skip", json={"reason": reason}).status_code


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PlatformDouble]:
    with run_platform(tmp_path / "platform") as double:
        yield double


def waiting_between_tries(job: dict[str, Any]) -> bool:
    return job["status"] == "queued" and job["next_try_at"] is not None


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_database")
    reset_schema(url)
    return url


# -- retries never hold a worker -------------------------------------------------------------------


def test_jobs_failing_slowly_leave_the_slots_to_other_jobs(tmp_path: Path, platform: PlatformDouble,
                                                          state: str) -> None:
    case = Case(tmp_path, platform, state=state, concurrency=2, retry_base_s=0.5, retry_max_s=2.0)
    upload_fails, bad_key, _ = case.request()
    callback_fails, _, bad_token = case.request()
    platform.fail_uploads(FOREVER, 500, key=bad_key)
    platform.fail_callbacks(FOREVER, 500, token=bad_token)
    with case.proc as proc:
        stuck = [proc.deliver(upload_fails), proc.deliver(callback_fails)]
        for job_id in stuck:  # both have failed at least once and wait for their next try
            proc.wait_until(job_id, lambda j: len([a for a in j["attempts"] if a["http_status"] == 500]) >= 1,
                            timeout=20, what="a failed try")
        others = [case.request() for _ in range(4)]
        done = [proc.wait_for_job(proc.deliver(event), timeout=30) for event, _, _ in others]

        assert [j["status"] for j in done] == ["completed"] * 4
        for (_, key, token) in others:
            assert [u.outcome for u in platform.uploads(key)] == ["stored"]
            assert [c.status for c in platform.callbacks(token)] == [202]
        # Meanwhile the two kept trying, and wait in the queue between tries.
        for job_id in stuck:
            job = proc.wait_until(job_id, lambda j: waiting_between_tries(j) and j["runs"] >= 2, timeout=20,
                                  what="a second try, then waiting for the next")
            assert job["error"] is None
        assert len(platform.uploads(bad_key)) >= 2
        # The upload of the job whose callback fails was done once: only the callback is tried again.
        callback_job = proc.job(stuck[1])
        assert len(attempts(callback_job, "upload")) == 1 and len(attempts(callback_job, "callback")) >= 2
        retry_lines = [line for line in proc.serve.log_lines() if "retrying in" in line.get("msg", "")]
        assert retry_lines and all(line["level"] == "warning" for line in retry_lines)
        assert not [line for line in proc.serve.log_lines() if line.get("msg", "").startswith("upload failed")]


# -- operators in charge ---------------------------------------------------------------------------


def test_skip_of_a_job_waiting_between_tries(tmp_path: Path, platform: PlatformDouble) -> None:
    case = Case(tmp_path, platform, retry_base_s=30, retry_max_s=30)
    event, key, token = case.request()
    platform.fail_uploads(FOREVER, 503, key=key, retry_after="30")
    with case.proc as proc:
        job_id = proc.deliver(event)
        proc.wait_until(job_id, waiting_between_tries, timeout=20, what="waiting between tries")

        assert case.skip(job_id, "operator: no master") == 202
        job = proc.wait_for_job(job_id, timeout=10)

    assert (job["status"], job["skip_reason"], job["next_try_at"]) == ("skipped", "operator: no master", None)
    assert [c.body for c in platform.callbacks(token)] == [{"skip": True, "reason": "operator: no master"}]
    assert [u.status for u in platform.uploads(key)] == [503]


def test_skip_of_a_running_job_stops_its_try_and_sends_the_skip(tmp_path: Path, platform: PlatformDouble) -> None:
    case = Case(tmp_path, platform, http_timeout_s=60)
    event, key, token = case.request()
    platform.hang_uploads(1, key=key)
    with case.proc as proc:
        job_id = proc.deliver(event)
        platform.wait_for(lambda p: [u.outcome for u in p.uploads(key)] == ["hung"], timeout=10,
                          what="the upload held open")
        assert proc.job(job_id)["status"] == "running"

        asked = time.monotonic()
        assert case.skip(job_id, "operator: wrong master") == 202
        job = proc.wait_for_job(job_id, timeout=10)
        took = time.monotonic() - asked
        platform.release()
        log = proc.log_text()

    assert took < 5  # not the upload's 60 s timeout
    assert (job["status"], job["skip_reason"]) == ("skipped", "operator: wrong master")
    assert [c.body for c in platform.callbacks(token)] == [{"skip": True, "reason": "operator: wrong master"}]
    assert platform.stored(key) is None
    # The try cut short is on record as cancelled, and nowhere as a success.
    assert [(a["step"], a["error"]) for a in job["attempts"]] == [
        ("resolve", None), ("upload", "cancelled"), ("callback", None)]
    assert "upload ok" not in log and "job released to send an operator's skip" in log


def test_skip_of_a_final_job_is_refused(tmp_path: Path, platform: PlatformDouble) -> None:
    case = Case(tmp_path, platform)
    event, _, _ = case.request()
    with case.proc as proc:
        job_id = proc.deliver(event)
        assert proc.wait_for_job(job_id, timeout=20)["status"] == "completed"
        assert case.skip(job_id, "too late") == 409
        assert proc.admin("POST", f"/admin/jobs/{job_id}/rerun").status_code == 202


# -- shutdown -------------------------------------------------------------------------------------


def test_sigterm_while_jobs_wait_between_tries_exits_at_once(tmp_path: Path, platform: PlatformDouble) -> None:
    case = Case(tmp_path, platform, shutdown_grace_s=20, retry_base_s=60, retry_max_s=60)
    event, key, token = case.request()
    platform.fail_uploads(FOREVER, 503, key=key, retry_after="60")
    proc = case.proc.start()
    try:
        job_id = proc.deliver(event)
        proc.wait_until(job_id, waiting_between_tries, timeout=20, what="waiting between tries")

        signalled = time.monotonic()
        assert proc.stop() in GRACEFUL
        assert time.monotonic() - signalled < 5  # not the 20 s grace: nothing was in flight

        proc.start()
        job = proc.job(job_id)
    finally:
        proc.close()
    assert waiting_between_tries(job) and job["runs"] == 1
    assert [u.status for u in platform.uploads(key)] == [503]
    assert platform.callbacks(token) == []


# -- a retry finds its master again ---------------------------------------------------------------


def test_a_retried_upload_resolves_a_replaced_s3_master(tmp_path: Path, platform: PlatformDouble,
                                                       moto_endpoint: str) -> None:  # noqa: F811
    s3 = boto3.session.Session().client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"masters-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    catalogs = {"s3": {"type": "s3", "bucket": bucket, "region": "us-east-1", "endpoint_url": moto_endpoint}}
    env = {**DUMMY_AWS_ENV, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    case = Case(tmp_path, platform, catalogs=catalogs, env=env)
    code = f"S3-{uuid.uuid4().hex[:8].upper()}"
    event, key, token = case.request(code, master=None)
    s3.put_object(Bucket=bucket, Key=f"{code}/v1/en/9x16.mp4", Body=MASTER)
    platform.fail_uploads(1, 503, key=key, retry_after="3")  # the retry waits 3 s: time to replace the master
    replaced = MASTER + os.urandom(4096)
    with case.proc as proc:
        job_id = proc.deliver(event)
        proc.wait_until(job_id, waiting_between_tries, timeout=20, what="waiting between tries")
        s3.put_object(Bucket=bucket, Key=f"{code}/v1/en/9x16.mp4", Body=replaced)
        job = proc.wait_for_job(job_id, timeout=30)
    s3.close()

    assert job["status"] == "completed", job
    assert [(a["step"], a["http_status"]) for a in job["attempts"]] == [
        ("resolve", None), ("upload", 503), ("resolve", None), ("upload", 200), ("callback", 202)]
    stored = platform.stored(key)
    assert stored is not None and stored.read_bytes() == replaced
    assert len(platform.callbacks(token)) == 1


# -- a worker that cannot renew its lease stops ----------------------------------------------------


def test_a_worker_that_cannot_renew_its_lease_stops_its_work(tmp_path: Path, platform: PlatformDouble) -> None:
    db = tmp_path / "state.db"
    case = Case(tmp_path, platform, state=f"sqlite:///{db}?busy_timeout_ms=200", lease_s=2, http_timeout_s=60,
                chunk_bytes=65_536)
    # Larger than loopback's socket buffers can absorb: a smaller master may leave whole in them before the
    # worker stops, and the (throttled) platform then stores it once more, with the same bytes.
    master = MASTER + os.urandom(24 * 1024 * 1024)
    event, key, token = case.request(master=master)
    platform.slow_uploads(len(master) / 30)  # the upload would take 30 s
    with case.proc as proc:
        job_id = proc.deliver(event)
        platform.wait_for_bytes(key, 256 * 1024, timeout=20)
        # Another process holds the database's write lock: no renewal can commit.
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            proc.log_containing("job lease not renewed for lease_s; stopped working on the job", timeout_s=15)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        platform.slow_uploads(None)
        job = proc.wait_for_job(job_id, timeout=30)

    # Taken up again once its lease lapsed, and delivered once.
    assert job["status"] == "completed", job
    assert job["crashes"] == 1
    # The first upload was cut short of its last chunk: never stored, whatever the double read of it.
    assert [u.outcome for u in platform.uploads(key)][-1] == "stored"
    assert [u.outcome for u in platform.uploads(key)].count("stored") == 1
    assert [c.status for c in platform.callbacks(token)] == [202]


# -- telling the platform at once (worker.negative_ack_failures) ---------------------------------


def test_a_request_invalid_at_intake_gets_a_negative_ack_when_configured(tmp_path: Path,
                                                                        platform: PlatformDouble) -> None:
    case = Case(tmp_path, platform, negative_ack_failures=True)
    event, _, token = case.request()
    # A deadline two days ahead: past what intake allows, so the job is invalid as it is stored.
    event["fulfillment"]["expiresAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2 * 86400))
    with case.proc as proc:
        job_id = proc.deliver(event)
        [callback] = platform.wait_for_callbacks(1, token=token)
        job = proc.wait_until(job_id, lambda j: j["skip_reason"] is not None)
    assert callback.body == {"skip": True, "reason": f"failed:{job['error']}"}
    assert job["status"] == "invalid" and job["skip_reason"] == f"failed:{job['error']}"
    assert "expiresAt" in job["error"] and platform.uploads() == []
