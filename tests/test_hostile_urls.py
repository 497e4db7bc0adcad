"""Hostile URLs in a signed event, against a real ``fulfiller serve``.

The platform double (uploads and callbacks) is the only host on the allow-lists,
pinned by its port. A trap listener beside it on 127.0.0.1, on another port and
on no allow-list, counts every connection it gets: a URL that makes the upload
library go there (while the allow-list check read the allowed host) is caught
by a count above zero. Each hostile URL must end its job ``invalid`` at once,
naming the field, with nothing sent anywhere; the worker then goes on with a
plain request. Credentials of every shape stay out of the admin API and the log.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

MEDIA = Path(__file__).parent / "media"
# Hostile jobs end at intake: a few seconds is already generous, against a deadline an hour away.
PROMPT_S = 10
JOB_TIMEOUT_S = 30


class Trap:
    """A plain TCP listener on 127.0.0.1 that accepts, counts and closes every connection."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._count = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="trap", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._count

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            with self._lock:
                self._count += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)


@dataclass
class Stack:
    proc: FulfillerProcess
    platform: PlatformDouble
    trap: Trap
    masters: Path

    def request(self, *, upload_url: str | None = None, callback_url: str | None = None) -> tuple[dict[str, Any], str]:
        """An OSS request for a fresh code whose master exists: what would be uploaded, were the URLs obeyed."""
        code = f"HOSTILE-{uuid.uuid4().hex[:8].upper()}"
        (self.masters / code / "v1" / "en").mkdir(parents=True)
        shutil.copyfile(MEDIA / "9x16.mp4", self.masters / code / "v1" / "en" / "9x16.mp4")
        key = storage_key(code, "9x16")
        return source_requested(code, aspect="9x16", key=key,
                                upload_url=upload_url or self.platform.presign(key),
                                callback_url=callback_url or self.platform.callback_url(new_token())), key

    def assert_a_plain_request_still_completes(self) -> None:
        event, key = self.request()
        job = self.proc.wait_for_job(self.proc.deliver(event), timeout=JOB_TIMEOUT_S)
        assert job["status"] == "completed", job
        assert self.platform.stored(key) is not None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile-urls")
    masters = root / "masters"
    masters.mkdir()
    trap = Trap()
    try:
        with run_platform(root / "platform") as platform:
            allowed = platform.base_url.removeprefix("http://")  # 127.0.0.1:<port>: the trap's port is not on it
            config = {
                # The glob lets a full-width host through the allow-list check, as a real R2 glob would.
                "worker": fast_worker([allowed, "*.r2.cloudflarestorage.com"], [allowed]),
                "catalogs": {"local": {"type": "local", "root": str(masters)}},
                "routes": [{"codes": ["*"], "catalog": "local"}],
            }
            with FulfillerProcess(root / "serve", config) as proc:
                yield Stack(proc, platform, trap, masters)
    finally:
        trap.close()


def end_invalid_at_once(stack: Stack, event: dict[str, Any], field: str) -> dict[str, Any]:
    job = stack.proc.wait_for_job(stack.proc.deliver(event), timeout=PROMPT_S)
    assert job["status"] == "invalid", job
    assert job["error"].startswith(f"invalid payload: fulfillment.{field}: "), job["error"]
    assert attempts(job, "upload") == [] and attempts(job, "callback") == []
    return job


def test_a_host_behind_a_backslash_gets_no_connection(stack: Stack) -> None:
    # urllib.parse reads the allowed host after the "@"; urllib3, which uploads, the trap before the backslash.
    allowed = stack.platform.base_url.removeprefix("http://")
    event, key = stack.request()
    path_and_query = stack.platform.presign(key).removeprefix(stack.platform.base_url)
    event["fulfillment"]["uploadUrl"] = f"http://127.0.0.1:{stack.trap.port}\\@{allowed}{path_and_query}"
    job = end_invalid_at_once(stack, event, "uploadUrl")
    assert "backslash" in job["error"]
    stack.assert_a_plain_request_still_completes()
    assert stack.trap.connections == 0
    assert stack.platform.uploads(key) == []


def test_userinfo_in_the_upload_url_gets_no_connection(stack: Stack) -> None:
    allowed = stack.platform.base_url.removeprefix("http://")
    event, key = stack.request()
    path_and_query = stack.platform.presign(key).removeprefix(stack.platform.base_url)
    event["fulfillment"]["uploadUrl"] = f"http://127.0.0.1:{stack.trap.port}@{allowed}{path_and_query}"
    end_invalid_at_once(stack, event, "uploadUrl")
    assert stack.trap.connections == 0
    assert stack.platform.uploads(key) == []


@pytest.mark.parametrize("char", ["\n", "\x01", "\x7f"])
def test_a_control_character_in_the_callback_url_ends_the_job_invalid_not_running(stack: Stack, char: str) -> None:
    token = new_token()
    event, key = stack.request(callback_url=stack.platform.callback_url(token).replace("/complete", f"{char}/complete"))
    job = end_invalid_at_once(stack, event, "completeCallbackUrl")
    assert "control character" in job["error"] or "whitespace" in job["error"]
    assert stack.platform.uploads(key) == []  # the master is not uploaded, let alone again on every lease lapse
    assert stack.platform.callbacks(token) == []


def test_a_full_width_upload_host_ends_the_job_invalid_at_once(stack: Stack) -> None:
    full_width = "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45"  # "example" in full-width letters
    event, _ = stack.request(upload_url=f"https://{full_width}.r2.cloudflarestorage.com/k?X-Amz-Signature=s")
    job = end_invalid_at_once(stack, event, "uploadUrl")
    assert "not plain ASCII" in job["error"]
    stack.assert_a_plain_request_still_completes()


@pytest.mark.parametrize("scheme", ["https", "HTTPS"])
def test_a_callback_urls_credential_stays_out_of_the_admin_api_and_the_log(stack: Stack, scheme: str) -> None:
    # A callback host outside the allow-list: the job fails before anything is sent, and is shown to operators.
    secret_hash = secrets.token_hex(16)
    event, key = stack.request(callback_url=f"{scheme}://hooks.example.com/tokens/tok_1/callback/{secret_hash}")
    signature = event["fulfillment"]["uploadUrl"].rsplit("X-Amz-Signature=", 1)[1]
    job_id = stack.proc.deliver(event)
    job = stack.proc.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    assert job["status"] == "failed" and "not in the allow-list" in job["error"], job
    assert job["event"]["fulfillment"]["completeCallbackUrl"] == (
        f"{scheme}://hooks.example.com/tokens/tok_1/REDACTED/REDACTED")
    answers = [stack.proc.admin("GET", f"/admin/jobs/{job_id}").text,
               stack.proc.admin("GET", "/admin/jobs", params={"limit": 500}).text]
    for text in [*answers, stack.proc.log_text()]:
        assert secret_hash not in text and signature not in text
    assert stack.platform.uploads(key) == []
