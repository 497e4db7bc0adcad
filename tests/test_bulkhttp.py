"""BulkHttp honours the environment's proxies as httpx and boto3 do: a container's only way out may be a proxy."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fulfiller.bulkhttp import BulkHttp, release

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Recorder(ThreadingHTTPServer):
    """Answers every PUT 200 and keeps (request target, Proxy-Authorization, body) for each."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None, bytes]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_PUT(self) -> None:  # noqa: N802 - the stdlib's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.seen.append((self.path, self.headers.get("Proxy-Authorization"), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def put(url: str) -> int:
    bulk = BulkHttp(5.0, 2, redirects=0)
    try:
        response = bulk.request("PUT", url, body=b"master bytes", headers={"Content-Length": "12"},
                                preload_content=False)
        release(response)
        return response.status
    finally:
        bulk.clear()


def test_without_a_proxy_the_request_goes_straight_to_the_host(recorder: Recorder) -> None:
    assert put(f"http://{recorder.address}/r2/key.mp4?X-Amz-Signature=s") == 200
    assert recorder.seen == [("/r2/key.mp4?X-Amz-Signature=s", None, b"master bytes")]


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_from_the_environment_carries_the_request_with_its_credentials(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, f"http://egress:s3cret@{recorder.address}")

    # The target's name is never looked up here: only the proxy is connected to.
    assert put("http://uploads.example.test/r2/key.mp4?X-Amz-Signature=s") == 200

    [(target, authorization, body)] = recorder.seen
    assert target == "http://uploads.example.test/r2/key.mp4?X-Amz-Signature=s"
    assert authorization == "Basic " + base64.b64encode(b"egress:s3cret").decode()
    assert body == b"master bytes"


def test_no_proxy_hosts_bypass_the_proxy(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there: using it would fail
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")

    assert put(f"http://{recorder.address}/r2/key.mp4") == 200
    assert [target for target, _, _ in recorder.seen] == ["/r2/key.mp4"]
