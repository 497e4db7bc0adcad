"""Streaming a master to the pre-signed upload URL.

S3-style pre-signed PUTs (R2 included) refuse chunked bodies, so the request
carries the exact Content-Length known from the catalog, and the bytes flow
through in chunks: memory stays flat whatever the master's size. SHA-256 is
computed on the way for the callback's ``contentHash``.

Hashing overlaps reading and sending, with no trip through the event loop
per chunk: the PUT's thread (urllib3, ``bulkhttp``) reads each chunk straight
from the catalog's ``Source`` (a file's ``readinto``, botocore's or urllib3's
response) into one of a few reused buffers, hands it to a hasher thread and
sends it. hashlib and the socket both release the GIL, so SHA-256 runs on one
core while the bytes move on another, instead of adding to the transfer's
time. A buffer is read into again only once both are done with it. Reading on
a third thread of its own measured no faster and cost more CPU (one more
handoff and wake-up per chunk, one more thread taking turns on two cores:
``bench/README.md``). A stream that is not a catalog's source (any async
generator) is fed to the PUT's thread from the event loop.

The chunk size is the worker's ``chunk_bytes`` (1 MiB by default), chosen by
measurement (``bench/README.md``): smaller chunks cost more CPU per byte in
handing them between threads, while a few MiB in flight in all stay in the
CPU's cache from the reading through the hashing to the sending, where bigger
or more buffers measured slower. Hence ``DEPTH`` buffers of one chunk each:
memory stays flat, whatever the master's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import urllib3

from fulfiller.bulkhttp import BulkHttp, release
from fulfiller.catalogs.base import Source, SourceStream
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


def excerpt(text: str, limit: int = 500) -> str:
    """The start of a response body, kept on the job so operators see why a peer refused."""
    return redact_text(text[:limit].strip())


def transient_for(status: int, retry_after: str | None, what: str) -> Transient | None:
    """A Transient for 429 and 5xx answers (honouring Retry-After), else None."""
    if status == 429 or status >= 500:
        return Transient(f"{what} answered {status}", http_status=status, retry_after=parse_retry_after(retry_after))
    return None


# Chunks in flight between the reading and the two consumers of each (the hasher and the sender): reading
# runs ahead of sending by that much, and a slow peer holds back the read instead of the master piling up.
DEPTH = 4


class _Aborted(Exception):
    """Raised inside the request body to cut the PUT short of its Content-Length."""


class _Count:
    """The bytes read so far, against the size the catalog listed."""

    def __init__(self, size: int):
        self.size, self.total = size, 0

    def add(self, n: int) -> bool:
        """Count ``n`` more bytes; True when they complete the master."""
        if self.total + n > self.size:
            raise SizeMismatch(f"master grew past its listed size of {self.size} bytes")
        self.total += n
        return self.total == self.size

    def end(self) -> None:
        if self.total != self.size:
            raise SizeMismatch(f"master ended at {self.total} of its listed {self.size} bytes")


class _Chunk:
    """Bytes in flight, hashed by one thread and sent by another; ``release`` runs once both are done with them
    (for a reused buffer: it may be read into again)."""

    __slots__ = ("view", "last", "_release", "_left", "_lock")

    def __init__(self, view: memoryview, release: Callable[[], object] | None = None):
        self.view, self.last, self._release = view, False, release
        self._left = 2
        self._lock = threading.Lock()

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left or self._release is None:
                return
        self._release()


class _Pipeline(Generic[T]):
    """One upload: a request on a thread of its own, whose body is fed chunk by chunk, and a hasher thread.

    Each chunk goes to the hasher before it is sent: hashlib and the socket both
    release the GIL, so SHA-256 runs on one core while the bytes go out on
    another, instead of one after the other. A catalog's source is read on the
    sending thread itself, into ``DEPTH`` reused buffers (``read_from``): the
    read and the send of one chunk follow each other, as in a plain copy, with
    one handoff per chunk (to the hasher) and no thread of its own to wake. Any
    other stream is fed from the event loop (``feed``). The last chunk leaves
    only once the source ended cleanly at the listed size and, the hasher done,
    the SHA-256 matches ``expected_sha256``: a check that fails at the end (the
    hash, or one the catalog makes, like Drive's md5) cuts the PUT short of its
    Content-Length, so the store never keeps a whole object made of bad bytes.

    ``result`` settles when the request returns, or with the first failure of
    the reading; a peer that answers before the body is all sent (a 403 on a bad
    signature) settles it early, and the reading stops.
    """

    def __init__(self, request: Callable[[Iterator[memoryview]], T], size: int, expected_sha256: str | None):
        self._loop = asyncio.get_running_loop()
        self._request, self._size, self._expected = request, size, expected_sha256
        self._to_send: queue.SimpleQueue[_Chunk | BaseException] = queue.SimpleQueue()  # from ``feed``
        self._to_hash: queue.SimpleQueue[_Chunk | None] = queue.SimpleQueue()
        self._hashed = threading.Event()  # the last chunk is hashed
        self._over = threading.Event()  # nothing more will be sent
        self._wake: Callable[[], object] = lambda: None  # unblocks the reading once ``_over`` is set
        self.sha256 = hashlib.sha256()  # of the bytes sent; read it once ``result`` has settled
        self.sent = 0
        self.result: asyncio.Future[T] = self._loop.create_future()
        threading.Thread(target=self._hash, name="upload-hash", daemon=True).start()

    def _start(self, chunks: Iterator[_Chunk], close: Callable[[], object] = lambda: None) -> None:
        """Send ``chunks`` (each handed to the hasher already) on a thread of its own, then ``close``."""
        threading.Thread(target=self._run, args=(chunks, close), name="upload", daemon=True).start()

    # -- the consumers ---------------------------------------------------------------------

    def _hash(self) -> None:
        while (chunk := self._to_hash.get()) is not None:
            self.sha256.update(chunk.view)
            chunk.done()
            if chunk.last:
                self._hashed.set()
                return

    def _body(self, chunks: Iterator[_Chunk]) -> Iterator[memoryview]:
        for chunk in chunks:
            if chunk.last:
                self._hashed.wait()
                actual = self.sha256.hexdigest()
                if self._expected is not None and actual != self._expected:
                    # Raised inside the body: the PUT ends short of its Content-Length, nothing is stored.
                    raise ChecksumMismatch(
                        f"sha256 mismatch: the catalog lists {self._expected}, the bytes read hash to {actual}"
                    )
            yield chunk.view  # back here once it is sent
            self.sent += len(chunk.view)
            chunk.done()
            if chunk.last:
                return

    def _run(self, chunks: Iterator[_Chunk], close: Callable[[], object]) -> None:
        try:
            outcome, error = self._request(self._body(chunks)), None
        except BaseException as exc:  # handed to the awaiting side
            outcome, error = None, exc
        finally:
            self._stop()
            close()
        if error is not None:
            self._settle(error)
        else:
            self._settle(None, outcome)

    def _settle(self, error: BaseException | None, outcome: Any = None) -> None:
        """Settle ``result`` from any thread, unless something settled it first."""

        def settle() -> None:
            if self.result.done():
                return
            if error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(outcome)

        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop closed first: nobody is waiting
            pass

    def _stop(self) -> None:
        self._over.set()
        self._to_hash.put(None)
        self._wake()

    def abort(self) -> None:
        """On the event loop: cut the body short (the request fails and its connection closes), stop the reading."""
        self._to_send.put(_Aborted())
        self._stop()
        # Its failure is the expected outcome: retrieved here so asyncio does not report it as lost.
        self.result.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- the feeds -------------------------------------------------------------------------

    def read_from(self, source: Source, head: bytes, chunk_size: int) -> None:
        """Send ``source`` (after ``head``, already read from it), read on the sending thread, which closes it."""
        self._start(self._read(source, head, chunk_size), source.close)

    def _read(self, source: Source, head: bytes, chunk_size: int) -> Iterator[_Chunk]:
        """The source's chunks, each hashed as it is sent; the one that completes the master comes only once
        the source has ended there (and made its own checks)."""
        free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()  # None: stop
        self._wake = lambda: free.put(None)
        for _ in range(DEPTH):
            free.put(memoryview(bytearray(max(chunk_size, len(head)))))

        def read() -> Iterator[_Chunk]:
            if head:
                yield _Chunk(memoryview(head))
            while (buffer := free.get()) is not None and not self._over.is_set():
                n = source.readinto(buffer)
                if not n:
                    free.put(buffer)
                    return
                yield _Chunk(buffer[:n], partial(free.put, buffer))
            raise _Aborted()

        count, last = _Count(self._size), None
        try:
            for chunk in read():
                if count.add(len(chunk.view)):
                    last = chunk  # hashed now, sent once the source has said it ends here
                    chunk.last = True
                self._to_hash.put(chunk)
                if last is None:
                    yield chunk
            count.end()
        except Exception as exc:  # not GeneratorExit: a body left unsent is closed, not failed
            self._settle(exc)  # first: the request's own failure, once cut, must not settle it instead
            raise
        if last is None:  # an empty master: the checks still run
            last = _Chunk(memoryview(b""))
            last.last = True
            self._to_hash.put(last)
        yield last

    def _queued(self) -> Iterator[_Chunk]:
        """The chunks ``feed`` hands over, until the last or a failure."""
        while not isinstance(chunk := self._to_send.get(), BaseException):
            yield chunk
            if chunk.last:
                return
        raise chunk

    def _emit(self, chunk: _Chunk) -> None:
        self._to_hash.put(chunk)
        self._to_send.put(chunk)

    def _take(self, count: _Count, chunk: _Chunk, held: _Chunk | None) -> _Chunk | None:
        """Send ``chunk`` now, or hold it back (returned) when it completes the master."""
        if count.add(len(chunk.view)):
            return chunk
        self._emit(chunk)
        return held

    async def feed(self, chunks: AsyncGenerator[bytes, None]) -> None:
        """Hand over the chunks of a stream from the event loop; stop early if the peer answered."""
        space = asyncio.Semaphore(DEPTH)

        def free() -> None:
            # From the hasher or the sender, which may finish a failed upload's chunks after it returned.
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody is feeding
                self._loop.call_soon_threadsafe(space.release)

        self._wake = free
        self._start(self._queued())
        count, held = _Count(self._size), None
        async for chunk in chunks:
            if not chunk:
                continue
            await space.acquire()
            if self._over.is_set():
                return
            held = self._take(count, _Chunk(memoryview(chunk), free), held)
        count.end()
        held = held or _Chunk(memoryview(b""))  # an empty master: the checks still run
        held.last = True
        self._emit(held)


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
        pipeline = _Pipeline(lambda body: self._request(url, body, headers), size, expected_sha256)
        try:
            if isinstance(chunks, SourceStream):
                head, source = await chunks.hand_over()
                pipeline.read_from(source, head, chunks.chunk_size)
            else:
                async with contextlib.aclosing(chunks):  # a feed that stops early releases the catalog's stream now
                    await pipeline.feed(chunks)
            status, retry_after, text = await pipeline.result
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(f"upload failed: {type(exc).__name__}: {redact_text(str(exc))}") from None
        except BaseException:
            pipeline.abort()
            raise
        if 200 <= status < 300:
            if pipeline.sent != size:  # answered before the whole body went out: nothing says it was stored
                raise Transient(f"upload answered {status} after {pipeline.sent} of {size} bytes")
            return Delivered(size, pipeline.sha256.hexdigest(), status)
        transient = transient_for(status, retry_after, "upload")
        if transient:
            raise transient
        raise Refused("upload", status, excerpt(text))

    def _request(self, url: str, body: Iterator[memoryview], headers: dict[str, str]) -> tuple[int, str | None, str]:
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
