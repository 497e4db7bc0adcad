"""Streaming a master to the pre-signed upload URL.

S3-style pre-signed PUTs (R2 included) refuse chunked bodies, so the request
carries the exact Content-Length known from the catalog, and the bytes flow
through in chunks: memory stays flat whatever the master's size. SHA-256 is
computed on the way for the callback's ``contentHash``.

The PUT itself runs on a thread of its own through urllib3 (``bulkhttp``),
which hashes each chunk as it sends it, fed chunk by chunk from the event loop,
which goes on reading from the catalog meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import urllib3

from fulfiller.bulkhttp import BulkHttp, release
from fulfiller.hosts import Target
from fulfiller.redact import redact_text
from fulfiller.retry import Transient, parse_retry_after

T = TypeVar("T")
# Enough of a refusal's body for an operator to see why; the rest is not read.
EXCERPT_BYTES = 2048


@dataclass(frozen=True)
class Delivered:
    bytes: int
    sha256: str  # lowercase hex
    http_status: int


class Refused(Exception):
    """The peer answered with a status that retrying will not change."""

    def __init__(self, what: str, http_status: int, body: str):
        super().__init__(f"{what} answered {http_status}: {body}" if body else f"{what} answered {http_status}")
        self.http_status = http_status
        self.body = body


class SizeMismatch(Exception):
    """The catalog gave more or fewer bytes than it said the master has."""


class ChecksumMismatch(Exception):
    """The bytes read hash to something other than the SHA-256 the catalog publishes."""


class _Aborted(Exception):
    """Raised inside the request body to cut the PUT short of its Content-Length."""


def excerpt(text: str, limit: int = 500) -> str:
    """The start of a response body, kept on the job so operators see why a peer refused."""
    return redact_text(text[:limit].strip())


def transient_for(status: int, retry_after: str | None, what: str) -> Transient | None:
    """A Transient for 429 and 5xx answers (honouring Retry-After), else None."""
    if status == 429 or status >= 500:
        return Transient(f"{what} answered {status}", http_status=status, retry_after=parse_retry_after(retry_after))
    return None


_END = object()


class _Last(NamedTuple):
    """The body's final chunk, sent only if the whole body hashes to ``expected_sha256``."""

    chunk: bytes
    expected_sha256: str | None


class _Sender(Generic[T]):
    """One blocking request on a thread of its own, its body fed chunk by chunk from the event loop.

    The thread also hashes each chunk (SHA-256) just before sending it: hashlib
    releases the GIL, so the event loop goes on reading the next chunks from the
    catalog meanwhile, and the bytes are hashed exactly as they leave. At most
    ``depth`` chunks wait between the two sides: reading runs ahead of sending
    by that much, and a slow peer holds back the read from the catalog instead
    of the master piling up in memory.
    ``result`` settles when the request returns; a peer that answers before the
    body is all sent (a 403 on a bad signature) settles it early.
    """

    def __init__(self, request: Callable[[Iterator[bytes]], T], depth: int = 4):
        self._loop = asyncio.get_running_loop()
        self._chunks: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._space = asyncio.Semaphore(depth)
        self.sha256 = hashlib.sha256()  # of the bytes sent; read it once ``result`` has settled
        self.result: asyncio.Future[T] = self._loop.create_future()
        self.result.add_done_callback(lambda _: self._space.release())  # wakes a put() waiting for room
        threading.Thread(target=self._run, args=(request,), name="upload", daemon=True).start()

    def _run(self, request: Callable[[Iterator[bytes]], T]) -> None:
        try:
            outcome, error = request(self._body()), None
        except BaseException as exc:  # handed to the awaiting side
            outcome, error = None, exc

        def settle() -> None:
            if self.result.done():
                return
            if error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(outcome)  # type: ignore[arg-type]

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed first: nobody is waiting
            pass

    def _body(self) -> Iterator[bytes]:
        while (item := self._chunks.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            self._loop.call_soon_threadsafe(self._space.release)
            if isinstance(item, _Last):
                self.sha256.update(item.chunk)
                actual = self.sha256.hexdigest()
                if item.expected_sha256 is not None and actual != item.expected_sha256:
                    # Raised inside the body: the PUT ends short of its Content-Length, nothing is stored.
                    raise ChecksumMismatch(
                        f"sha256 mismatch: the catalog lists {item.expected_sha256}, the bytes read hash to {actual}"
                    )
                yield item.chunk
            else:
                self.sha256.update(item)  # type: ignore[arg-type]
                yield item  # type: ignore[misc]

    async def put(self, chunk: bytes | _Last) -> bool:
        """Queue ``chunk``; False (and not queued) once the request has already returned."""
        await self._space.acquire()
        if self.result.done():
            return False
        self._chunks.put(chunk)
        return True

    def end(self) -> None:
        """The body is complete."""
        self._chunks.put(_END)

    def abort(self) -> None:
        """Cut the body short: the request fails and its connection closes."""
        self._chunks.put(_Aborted())
        # Its failure is the expected outcome: retrieved here so asyncio does not report it as lost.
        self.result.add_done_callback(lambda f: f.cancelled() or f.exception())


def upload_target(url: str) -> Target:
    """Where the upload of ``url`` goes, as urllib3 (which sends it) reads the URL."""
    parts = urllib3.util.parse_url(url)
    return Target.of(parts.scheme or "", parts.host or "", parts.port)


class Uploader:
    """PUTs masters to pre-signed URLs; one per worker process, shared by its jobs."""

    def __init__(self, timeout_s: float, max_connections: int):
        self._pool = BulkHttp(timeout_s, max_connections, redirects=0)

    async def put(
        self,
        url: str,
        chunks: AsyncGenerator[bytes, None],
        size: int,
        content_type: str,
        expected_sha256: str | None = None,
    ) -> Delivered:
        """PUT ``size`` bytes from ``chunks``; raise Transient, Refused, SizeMismatch or ChecksumMismatch.

        ``expected_sha256`` (lowercase hex, when the catalog publishes one) is checked
        against the hash the upload computes anyway, before the last chunk leaves.
        """
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        sender = _Sender(lambda body: self._request(url, body, headers))
        try:
            async with contextlib.aclosing(chunks):  # a feed that stops early releases the catalog's stream now
                sent = await self._feed(sender, chunks, size, expected_sha256)
            status, retry_after, text = await sender.result
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(f"upload failed: {type(exc).__name__}: {redact_text(str(exc))}") from None
        except BaseException:
            sender.abort()
            raise
        if 200 <= status < 300:
            if sent != size:  # answered before the whole body went out: nothing says it was stored
                raise Transient(f"upload answered {status} after {sent} of {size} bytes")
            return Delivered(sent, sender.sha256.hexdigest(), status)
        transient = transient_for(status, retry_after, "upload")
        if transient:
            raise transient
        raise Refused("upload", status, excerpt(text))

    @staticmethod
    async def _feed(
        sender: _Sender[Any], chunks: AsyncGenerator[bytes, None], size: int, expected_sha256: str | None
    ) -> int:
        """Hand the chunks to the sender; the bytes handed over, fewer if the peer answered early."""
        # Each chunk goes out when the next one arrives, the last only once the source has ended
        # cleanly and the checksums agree: a check that fails at the end (the sender's SHA-256, or
        # one the catalog makes, like Drive's md5) then cuts the PUT short of its Content-Length,
        # so the store never keeps a whole object made of bad bytes.
        sent, held = 0, b""
        async for chunk in chunks:
            if sent + len(held) + len(chunk) > size:
                raise SizeMismatch(f"master grew past its listed size of {size} bytes")
            if held:
                if not await sender.put(held):
                    return sent
                sent += len(held)
            held = chunk
        if sent + len(held) != size:
            raise SizeMismatch(f"master ended at {sent + len(held)} of its listed {size} bytes")
        if not await sender.put(_Last(held, expected_sha256)):
            return sent
        sender.end()
        return sent + len(held)

    def _request(self, url: str, body: Iterator[bytes], headers: dict[str, str]) -> tuple[int, str | None, str]:
        """The PUT, on the sender's thread: status, Retry-After and the start of the answer's body."""
        # retries=False: no retry and no redirect here; a redirect could lead outside the allow-list.
        response = self._pool.request("PUT", url, body=body, headers=headers, chunked=False,
                                      preload_content=False, retries=False)
        try:
            text = response.read(EXCERPT_BYTES, decode_content=True).decode("utf-8", "replace")
            return response.status, response.headers.get("retry-after"), text
        finally:
            release(response)

    def close(self) -> None:
        self._pool.clear()
