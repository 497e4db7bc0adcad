"""Acceptance 2 of the fulfillment engine: faults, through a real ``fulfiller serve`` process.

The platform double answers what the test scripts (503s, 403, a PUT that
hangs or is cut, callback 500/409/410/400); a TCP proxy the test opens and
closes stands in for an S3 catalog that goes away and comes back. Each case
ends in the status SPEC names, with exactly the requests it should have made:
retries where retrying helps, none where it cannot, and never a second
callback.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker, free_port
from support.moto_server import DUMMY_AWS_ENV, aws_test_env, moto_endpoint  # noqa: F401  (fixtures)
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

MEDIA = Path(__file__).parent / "media"
MASTER = (MEDIA / "9x16.mp4").read_bytes()
JOB_TIMEOUT_S = 30


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` while started; the port is closed otherwise."""

    def __init__(self, port: int, upstream: tuple[str, int]):
        self.port = port
        self.upstream = upstream
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> TcpProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in self._conns:
                conn.close()


@dataclass
class Stack:
    proc: FulfillerProcess
    platform: PlatformDouble
    local_root: Path
    s3: Any
    flaky_bucket: str
    flaky_port: int
    moto_port: int
    tmp: Path

    def put_local(self, code: str, name: str = "9x16.mp4", data: bytes = MASTER) -> None:
        path = self.local_root / code / "v1" / "en" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def event(self, code: str, *, upload_url: str | None = None, callback_url: str | None = None,
              expires_at: float | None = None) -> tuple[dict[str, Any], str, str]:
        """An OSS request for ``code`` (9x16 video) to the double, unless told otherwise."""
        key = storage_key(code, "9x16")
        token = new_token()
        event = source_requested(code, aspect="9x16", key=key, expires_at=expires_at,
                                 upload_url=upload_url or self.platform.presign(key),
                                 callback_url=callback_url or self.platform.callback_url(token))
        return event, key, token

    def run(self, event: dict[str, Any], timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        return self.proc.wait_for_job(self.proc.deliver(event), timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Stack]:  # noqa: F811
    root = tmp_path_factory.mktemp("engine-faults")
    local_root = root / "masters"
    local_root.mkdir()
    s3 = boto3.session.Session().client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    flaky_bucket = f"flaky-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=flaky_bucket)
    flaky_port = free_port()  # nothing listens here until a test opens its proxy
    with run_platform(root / "platform") as platform:
        config = {
            "worker": fast_worker([urlsplit(platform.base_url).netloc], [urlsplit(platform.base_url).netloc],
                                  http_timeout_s=1.5),
            "catalogs": {
                "local": {"type": "local", "root": str(local_root)},
                "flaky-s3": {"type": "s3", "bucket": flaky_bucket, "region": "us-east-1",
                             "endpoint_url": f"http://127.0.0.1:{flaky_port}"},
            },
            "routes": [{"codes": ["OUT-*"], "catalog": "flaky-s3"}, {"codes": ["*"], "catalog": "local"}],
        }
        env = {**DUMMY_AWS_ENV, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        with FulfillerProcess(root / "fulfiller", config, env=env) as proc:
            yield Stack(proc, platform, local_root, s3, flaky_bucket, flaky_port,
                        urlsplit(moto_endpoint).port or 0, root)
    s3.close()


def new_code(prefix: str = "F") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


def statuses(job: dict[str, Any], step: str) -> list[int | None]:
    return [a["http_status"] for a in attempts(job, step)]


# -- the R2 double is as strict as R2 -------------------------------------------------------


def _raw_request(base_url: str, head: str, body: bytes = b"", *, half_close: bool = False) -> bytes:
    """Send bytes as they are (no client library fixing them up) and read the answer."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_the_r2_double_refuses_what_r2_refuses(stack: Stack) -> None:
    platform = stack.platform
    key = storage_key(new_code("DIRECT"), "9x16")
    url = platform.presign(key)
    path_and_query = url[len(platform.base_url):]
    host = urlsplit(platform.base_url).netloc

    chunked = httpx.put(url, content=iter([b"abc", b"def"]), headers={"Content-Type": "video/mp4"})
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert chunked.status_code == 501
    assert b"NotImplemented" in chunked.content

    no_length = _raw_request(platform.base_url, f"PUT {path_and_query} HTTP/1.1\r\nHost: {host}\r\n"
                             "Content-Type: video/mp4\r\nConnection: close\r\n\r\n")
    assert no_length.startswith(b"HTTP/1.1 411 ")

    expired = platform.presign(key, expires_in=60, issued_at=time.time() - 3600)
    assert httpx.put(expired, content=MASTER).status_code == 403
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    tampered = url.replace(signature, signature[:-1] + ("0" if signature[-1] != "0" else "1"))
    refused = httpx.put(tampered, content=MASTER)
    assert refused.status_code == 403 and b"SignatureDoesNotMatch" in refused.content
    other_key = url.replace("/9x16.video?", "/4x5.video?")
    assert httpx.put(other_key, content=MASTER).status_code == 403

    # A body cut short of its Content-Length is never kept as the object.
    _raw_request(platform.base_url, f"PUT {path_and_query} HTTP/1.1\r\nHost: {host}\r\n"
                 f"Content-Length: {len(MASTER)}\r\n\r\n", MASTER[:100], half_close=True)
    platform.wait_for(lambda p: p.uploads(key)[-1].outcome != "in_flight", what="the cut PUT to end")
    assert platform.uploads(key)[-1].outcome == "disconnected"
    assert platform.stored(key) is None

    assert [u.status for u in platform.uploads(key)] == [501, 411, 403, 403, None]
    assert [u.status for u in platform.uploads(key.replace("/9x16.video", "/4x5.video"))] == [403]
    ok = httpx.put(url, content=MASTER, headers={"Content-Type": "video/mp4"})
    assert ok.status_code == 200
    stored = platform.stored(key)
    assert stored is not None
    assert (stored.read_bytes(), stored.content_type, stored.size) == (MASTER, "video/mp4", len(MASTER))


# -- upload faults ----------------------------------------------------------------------------


def test_upload_503_twice_then_success(stack: Stack) -> None:
    code = new_code()
    stack.put_local(code)
    event, key, token = stack.event(code)
    stack.platform.fail_uploads(2, 503, key=key)

    job = stack.run(event)

    assert job["status"] == "completed", job
    puts = stack.platform.uploads(key)
    assert [u.status for u in puts] == [503, 503, 200]
    # Every try is a fresh, whole, non-chunked PUT with the master's exact length.
    assert {(u.content_length, u.transfer_encoding, u.content_type) for u in puts} == {
        (len(MASTER), None, "video/mp4")
    }
    assert stack.platform.stored(key).read_bytes() == MASTER  # type: ignore[union-attr]
    assert statuses(job, "upload") == [503, 503, 200]
    assert len(stack.platform.callbacks(token)) == 1
    assert statuses(job, "callback") == [202]


def test_upload_retry_after_is_honoured(stack: Stack) -> None:
    code = new_code()
    stack.put_local(code)
    event, key, token = stack.event(code)
    stack.platform.fail_uploads(1, 429, key=key, retry_after="1")

    job = stack.run(event)

    assert job["status"] == "completed", job
    first, second = stack.platform.uploads(key)
    assert (first.status, second.status) == (429, 200)
    assert first.ended_at is not None
    assert second.started_at - first.ended_at >= 0.9  # the backoff alone would be ~0.02 s
    assert len(stack.platform.callbacks(token)) == 1


@pytest.mark.parametrize("fault", ["hang", "cut"])
def test_upload_that_hangs_or_is_cut_is_retried(stack: Stack, fault: str) -> None:
    code = new_code()
    stack.put_local(code)
    event, key, token = stack.event(code)
    if fault == "hang":
        stack.platform.hang_uploads(1, key=key)  # answered by the fulfiller's own timeout (1.5 s)
    else:
        stack.platform.cut_uploads(1, key=key)

    job = stack.run(event)

    assert job["status"] == "completed", job
    outcomes = [u.outcome for u in stack.platform.uploads(key)]
    assert outcomes == ["hung" if fault == "hang" else "cut", "stored"]
    assert stack.platform.stored(key).read_bytes() == MASTER  # type: ignore[union-attr]
    assert "upload failed" in attempts(job, "upload")[0]["error"]
    assert len(stack.platform.callbacks(token)) == 1


@pytest.mark.parametrize("how", ["expired", "tampered"])
def test_upload_403_fails_without_a_callback(stack: Stack, how: str) -> None:
    code = new_code()
    stack.put_local(code)
    key = storage_key(code, "9x16")
    if how == "expired":
        url = stack.platform.presign(key, expires_in=900, issued_at=time.time() - 3600)
    else:
        url = stack.platform.presign(key).replace("X-Amz-Signature=", "X-Amz-Signature=0")
    event, key, token = stack.event(code, upload_url=url)

    job = stack.run(event)

    assert job["status"] == "failed", job
    assert "upload answered 403" in job["error"]
    assert "pre-signed URL expired or invalid" in job["error"]
    assert [u.status for u in stack.platform.uploads(key)] == [403]  # not retried
    assert stack.platform.callbacks(token) == []
    signature = parse_qs(urlsplit(url).query)["X-Amz-Signature"][0]
    assert signature not in str(stack.proc.job(job["id"]))


def test_deadline_passing_during_retries_expires_the_job(stack: Stack) -> None:
    code = new_code()
    stack.put_local(code)
    expires_at = time.time() + 3
    event, key, token = stack.event(code, expires_at=expires_at)
    stack.platform.fail_uploads(1_000_000, 503, key=key)
    try:
        job = stack.run(event, timeout=20)
    finally:
        stack.platform.reset_faults()

    assert job["status"] == "expired", job
    assert "deadline" in job["error"]
    puts = stack.platform.uploads(key)
    assert len(puts) >= 3  # it did retry while there was time
    expiry = source_expiry(event)
    # No try starts past the deadline (one begun just before it may reach the double a few ms after).
    assert all(u.started_at < expiry + 0.25 for u in puts), [u.started_at - expiry for u in puts]
    assert puts[-1].started_at > expiry - 1.5  # it kept trying until close to the deadline
    assert stack.platform.callbacks(token) == []
    assert attempts(job, "callback") == []


def test_no_callback_starts_after_an_upload_that_ran_past_the_deadline(stack: Stack) -> None:
    code = new_code()
    stack.put_local(code)
    event, key, token = stack.event(code, expires_at=time.time() + 1.0)
    # The upload alone takes about 1.3 s (inside the 1.5 s HTTP timeout), so it ends past the deadline.
    stack.platform.slow_uploads(len(MASTER) / 1.3)
    try:
        job = stack.run(event, timeout=20)
    finally:
        stack.platform.slow_uploads(None)

    assert job["status"] == "expired", job
    assert job["error"].startswith("deadline (expiresAt) passed before"), job["error"]
    assert len(stack.platform.uploads(key)) <= 1
    assert stack.platform.callbacks(token) == []
    assert attempts(job, "callback") == []


def source_expiry(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["fulfillment"]["expiresAt"].replace("Z", "+00:00")).timestamp()


# -- callback answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "final", "error"),
    [
        ([500, 202], "completed", None),
        ([503, 503, 200], "completed", None),
        ([409], "superseded", "409"),
        ([410], "expired", "410"),
        ([400], "failed", "callback answered 400"),
    ],
    ids=["500-then-202", "503-twice-then-200", "409-superseded", "410-expired", "400-failed"],
)
def test_callback_answers(stack: Stack, script: list[int], final: str, error: str | None) -> None:
    code = new_code()
    stack.put_local(code)
    event, key, token = stack.event(code)
    stack.platform.script_callbacks(token, script)

    job = stack.run(event)

    assert job["status"] == final, job
    callbacks = stack.platform.callbacks(token)
    assert [c.status for c in callbacks] == script
    assert statuses(job, "callback") == script
    # Every try carries the same completion body; the bytes were uploaded once.
    assert len({c.raw for c in callbacks}) == 1
    assert callbacks[0].body["storageKey"] == key
    assert [u.status for u in stack.platform.uploads(key)] == [200]
    if error is None:
        assert job["error"] is None
    else:
        assert error in job["error"]


def test_skip_callback_409_is_superseded(stack: Stack) -> None:
    code = new_code()  # nothing in the catalog: a skip
    event, key, token = stack.event(code)
    stack.platform.script_callbacks(token, [409])

    job = stack.run(event)

    assert job["status"] == "superseded", job
    assert job["skip_reason"] == "no_match:aspect=9x16"
    [callback] = stack.platform.callbacks(token)
    assert callback.body == {"skip": True, "reason": "no_match:aspect=9x16"}
    assert stack.platform.uploads(key) == []


# -- catalog outage ---------------------------------------------------------------------------------


def test_catalog_outage_that_heals_completes(stack: Stack) -> None:
    code = new_code("OUT")
    stack.s3.put_object(Bucket=stack.flaky_bucket, Key=f"{code}/v1/en/9x16.mp4", Body=MASTER)
    event, key, token = stack.event(code)
    job_id = stack.proc.deliver(event)

    # The catalog's port is closed: resolve fails and is retried; between tries the job waits in the queue.
    down = stack.proc.wait_until(
        job_id, lambda j: any("CatalogUnavailable" in (a["error"] or "") for a in attempts(j, "resolve")),
        timeout=20, what="a failed resolve attempt")
    assert down["status"] in ("running", "queued")
    assert stack.platform.uploads(key) == []

    proxy = TcpProxy(stack.flaky_port, ("127.0.0.1", stack.moto_port)).start()
    try:
        job = stack.proc.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    finally:
        proxy.stop()

    assert job["status"] == "completed", job
    resolves = attempts(job, "resolve")
    assert len(resolves) >= 2
    assert all(a["error"] for a in resolves[:-1]) and resolves[-1]["error"] is None
    assert stack.platform.stored(key).read_bytes() == MASTER  # type: ignore[union-attr]
    assert [u.status for u in stack.platform.uploads(key)] == [200]
    assert len(stack.platform.callbacks(token)) == 1


# -- allow-lists ------------------------------------------------------------------------------------


def test_upload_host_outside_the_allow_list_gets_nothing(stack: Stack) -> None:
    code = new_code()
    stack.put_local(code)
    with run_platform(stack.tmp / f"outsider-{code}") as outsider:
        key = storage_key(code, "9x16")
        event, key, token = stack.event(code, upload_url=outsider.presign(key))

        job = stack.run(event)

        assert job["status"] == "failed", job
        port = urlsplit(outsider.base_url).port
        assert job["error"] == f"upload host 127.0.0.1:{port} is not in the allow-list"
        assert outsider.count("upload") == 0 and outsider.count("callback") == 0
    assert stack.platform.callbacks(token) == []
    assert attempts(job, "upload") == []


def test_callback_host_outside_the_allow_list_gets_nothing(stack: Stack) -> None:
    code = new_code()
    stack.put_local(code)
    with run_platform(stack.tmp / f"outsider-{code}") as outsider:
        token = new_token()
        event, key, _ = stack.event(code, callback_url=outsider.callback_url(token))

        job = stack.run(event)

        assert job["status"] == "failed", job
        port = urlsplit(outsider.base_url).port
        assert job["error"] == f"callback host 127.0.0.1:{port} is not in the allow-list"
        assert outsider.count("upload") == 0 and outsider.count("callback") == 0
    assert stack.platform.uploads(key) == []  # refused before any work: no bytes moved either
    assert job["attempts"] == []


# -- a callback whose answer is lost ------------------------------------------------------------------


def test_callback_answer_lost_then_409_is_our_own_completion(stack: Stack) -> None:
    """The platform completes the token but its answer never arrives (our timeout, 1.5 s); the
    retry gets 409 because of our own first try. That is a completion, not "completed elsewhere"."""
    code = new_code()
    stack.put_local(code)
    event, key, token = stack.event(code)
    stack.platform.slow_callbacks(1, 2.5, token=token)

    job = stack.run(event)

    callbacks = stack.platform.callbacks(token)
    assert [c.status for c in callbacks] == [202, 409]
    assert job["status"] == "completed", job
    assert statuses(job, "callback") == [None, 409]
    assert [u.status for u in stack.platform.uploads(key)] == [200]


@pytest.mark.parametrize("port", ["99999", "abc"])
def test_an_upload_url_with_a_malformed_port_is_an_invalid_payload(stack: Stack, port: str) -> None:
    code = new_code()
    stack.put_local(code)
    url = stack.platform.presign(storage_key(code, "9x16")).replace(
        stack.platform.base_url, f"{stack.platform.base_url.rsplit(':', 1)[0]}:{port}")
    event, key, token = stack.event(code, upload_url=url)

    job = stack.run(event, timeout=8)

    # Retrying would never help, so it is stopped at the door, not crashed on in a loop.
    assert job["status"] == "invalid", job
    assert job["error"].startswith("invalid payload: fulfillment.uploadUrl: ") and "port" in job["error"], job
    assert stack.platform.uploads(key) == [] and stack.platform.callbacks(token) == []
    assert job["runs"] == 0
