"""Streaming a master to the pre-signed upload URL.

S3-style pre-signed PUTs (R2 included) refuse chunked bodies, so the request
carries the exact Content-Length known from the catalog, and the bytes flow
through in chunks: memory stays flat whatever the master's size. SHA-256 is
computed on the way for the callback's ``contentHash``.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from fulfiller.redact import redact_text
from fulfiller.retry import Transient, parse_retry_after


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


def response_excerpt(response: httpx.Response, limit: int = 500) -> str:
    """The start of a response body, kept on the job so operators see why a peer refused."""
    return redact_text(response.text[:limit].strip())


def transient_for(response: httpx.Response, what: str) -> Transient | None:
    """A Transient for 429 and 5xx answers (honouring Retry-After), else None."""
    if response.status_code == 429 or response.status_code >= 500:
        return Transient(
            f"{what} answered {response.status_code}",
            http_status=response.status_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    return None


class _Hasher:
    """SHA-256 on its own thread, so hashing one chunk overlaps sending the next.

    hashlib releases the GIL on large buffers; on the event loop's thread the
    hash alone would cap a transfer at one core's hashing speed. The queue is
    bounded so a slow hasher holds back the stream instead of buffering it.
    """

    def __init__(self, depth: int = 8):
        self._sha = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._sha.update(chunk)

    async def update(self, chunk: bytes) -> None:
        try:
            self._queue.put_nowait(chunk)
        except queue.Full:
            await asyncio.to_thread(self._queue.put, chunk)

    async def hexdigest(self) -> str:
        if self._digest is None:
            await asyncio.to_thread(self._finish)
            self._digest = self._sha.hexdigest()
        return self._digest

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def abandon(self) -> None:
        """Stop the thread without waiting (the upload failed; the hash is not needed)."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            threading.Thread(target=self._queue.put, args=(None,), daemon=True).start()


_END = object()


async def _read_ahead(chunks: AsyncIterator[bytes], depth: int) -> AsyncIterator[bytes]:
    """``chunks``, with up to ``depth`` of them fetched while the earlier ones are being sent.

    Without it, reading the next chunk from the catalog waits until the last one is
    on the wire, so the transfer runs at the sum of both latencies rather than the slower.
    """
    ahead: asyncio.Queue[object] = asyncio.Queue(maxsize=depth)

    async def produce() -> None:
        try:
            async for chunk in chunks:
                await ahead.put(chunk)
            await ahead.put(_END)
        except Exception as exc:  # handed to the consumer, which raises it in order
            await ahead.put(exc)

    producer = asyncio.create_task(produce())
    try:
        while (item := await ahead.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item  # type: ignore[misc]
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


async def upload(
    client: httpx.AsyncClient,
    url: str,
    chunks: AsyncIterator[bytes],
    size: int,
    content_type: str,
    expected_sha256: str | None = None,
) -> Delivered:
    """PUT ``size`` bytes from ``chunks`` to ``url``; raise Transient, Refused, SizeMismatch or ChecksumMismatch.

    ``expected_sha256`` (lowercase hex, when the catalog publishes one) is checked
    against the hash the upload computes anyway, before the last chunk leaves.
    """
    hasher = _Hasher()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        # Each chunk goes out when the next one arrives, the last only once the source has ended
        # cleanly and the checksums agree: a check that fails at the end (ours, or one the catalog
        # makes, like Drive's md5) then cuts the PUT short of its Content-Length, so the store never
        # keeps a whole object made of bad bytes.
        nonlocal sent
        held = b""
        async for chunk in _read_ahead(chunks, depth=4):
            sent += len(chunk)
            if sent > size:
                raise SizeMismatch(f"master grew past its listed size of {size} bytes")
            await hasher.update(chunk)
            if held:
                yield held
            held = chunk
        if sent != size:
            raise SizeMismatch(f"master ended at {sent} of its listed {size} bytes")
        if expected_sha256 is not None and (actual := await hasher.hexdigest()) != expected_sha256:
            raise ChecksumMismatch(
                f"sha256 mismatch: the catalog lists {expected_sha256}, the bytes read hash to {actual}"
            )
        if held:
            yield held

    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    try:
        response = await client.put(url, content=body(), headers=headers)
    except httpx.HTTPError as exc:
        hasher.abandon()
        raise Transient(f"upload failed: {type(exc).__name__}: {redact_text(str(exc))}") from None
    except BaseException:
        hasher.abandon()
        raise
    if response.is_success:
        return Delivered(sent, await hasher.hexdigest(), response.status_code)
    hasher.abandon()
    transient = transient_for(response, "upload")
    if transient:
        raise transient
    raise Refused("upload", response.status_code, response_excerpt(response))
