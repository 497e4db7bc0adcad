"""The Uploader reading a catalog's source on a thread of its own, into reused buffers, against the R2-like
upload endpoint of the platform double (a real server on 127.0.0.1): every byte arrives once and in order,
and a check that fails at the end (size, checksum, the catalog's own) never lets the last chunk reach the peer.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable, Master, Opened, Source, SourceStream
from fulfiller.catalogs.local import LocalCatalog
from fulfiller.delivery.transfer import DEPTH, ChecksumMismatch, Refused, SizeMismatch, Uploader
from support.platform import PlatformDouble

CHUNK = 64 * 1024
TAIL = 123  # the last chunk's length: the master is not a whole number of chunks
DATA = random.Random(11).randbytes(48 * CHUNK + TAIL)  # many more chunks than buffers: each is reused


def assert_cut(platform: PlatformDouble, k: str, at_most: int = len(DATA) - 1) -> None:
    """The PUT to ``k`` was cut short, after at most ``at_most`` bytes, and nothing was stored."""
    [upload] = platform.wait_for_uploads(1, key=k)
    assert upload.outcome == "disconnected" and upload.received <= at_most
    assert platform.stored(k) is None


def key(request: pytest.FixtureRequest) -> str:
    return f"pipeline/{request.node.name}/master.mp4"


def local_master(tmp_path: Path, data: bytes, *, size: int | None = None, sha256: str | None = None) -> Master:
    path = tmp_path / "master.mp4"
    path.write_bytes(data)
    return Master("disk", "master.mp4", "master.mp4", len(data) if size is None else size, ref=str(path),
                  sha256=sha256)


def local_catalog(tmp_path: Path) -> LocalCatalog:
    return LocalCatalog("disk", "{code}", tmp_path)


class MemorySource(Source):
    """Bytes in memory, in reads of at most ``step``; ``end_check`` raised at the end, as a catalog's own check
    (Drive's md5) would, ``failure`` once ``fail_at`` bytes were read (a cut connection given up on);
    ``closed`` is set once the source is closed."""

    def __init__(self, data: bytes, step: int = CHUNK, end_check: Exception | None = None,
                 failure: Exception | None = None, fail_at: int = 0):
        self.data, self.step, self.end_check = data, step, end_check
        self.failure, self.fail_at = failure, fail_at
        self.at = 0
        self.closed = threading.Event()

    def readinto(self, buffer: memoryview) -> int:
        if self.failure is not None and self.at >= self.fail_at:
            raise self.failure
        n = min(len(buffer), self.step, len(self.data) - self.at)
        if not n and self.end_check is not None:
            raise self.end_check
        buffer[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n

    def close(self) -> None:
        self.closed.set()


def stream_of(source: Source) -> SourceStream:
    async def open_source() -> Source:
        return source

    return SourceStream(open_source, CHUNK)


async def test_every_byte_arrives_once_and_in_order_through_reused_buffers(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    k = key(request)
    master = local_master(tmp_path, DATA, sha256=hashlib.sha256(DATA).hexdigest())
    # A slow peer: the reading runs ahead until every buffer is taken, then refills each as soon as it is
    # released. A buffer read into while the sender still held it would show as wrong bytes at the peer.
    platform.slow_uploads(16 * 1024 * 1024)
    try:
        opened = await Opened.start(local_catalog(tmp_path), master, CHUNK)  # the head, as the sniff reads it
        stream = opened.take()
        assert isinstance(stream, SourceStream)  # the upload reads the source itself

        delivered = await uploader.put(platform.presign(k), stream, len(DATA), "video/mp4",
                                       expected_sha256=master.sha256)
    finally:
        platform.slow_uploads(None)

    assert (delivered.bytes, delivered.sha256) == (len(DATA), hashlib.sha256(DATA).hexdigest())
    stored = platform.stored(k)
    assert stored is not None and stored.read_bytes() == DATA
    assert len(DATA) // CHUNK > 4 * DEPTH


@pytest.mark.parametrize("at", [0, len(DATA) // 2, len(DATA) - 1], ids=["first", "middle", "last"])
@pytest.mark.parametrize("path", ["source", "async stream"])
async def test_a_corrupted_byte_never_lets_the_last_chunk_through(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest, tmp_path: Path,
    at: int, path: str,
) -> None:
    k = key(request)
    corrupted = bytearray(DATA)
    corrupted[at] ^= 0x01
    master = local_master(tmp_path, bytes(corrupted), sha256=hashlib.sha256(DATA).hexdigest())  # the listed hash
    stream = local_catalog(tmp_path).stream(master, 0, CHUNK)
    chunks: AsyncGenerator[bytes, None] = stream if path == "source" else (c async for c in stream)

    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        await uploader.put(platform.presign(k), chunks, len(DATA), "video/mp4", expected_sha256=master.sha256)

    assert_cut(platform, k, at_most=len(DATA) - TAIL)  # the final chunk never left


@pytest.mark.parametrize(("data", "error"), [(DATA[:-1000], "ended at"), (DATA + b"x", "grew past")],
                         ids=["short", "long"])
async def test_a_file_of_another_size_than_listed_is_never_stored(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest, tmp_path: Path,
    data: bytes, error: str,
) -> None:
    k = key(request)
    master = local_master(tmp_path, data, size=len(DATA))

    with pytest.raises(SizeMismatch, match=error):
        await uploader.put(platform.presign(k), local_catalog(tmp_path).stream(master, 0, CHUNK), len(DATA),
                           "video/mp4")

    assert_cut(platform, k)


async def test_the_catalog_s_own_check_at_the_end_holds_back_the_last_chunk(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key(request)
    source = MemorySource(DATA, end_check=CatalogError("md5 mismatch"))

    with pytest.raises(CatalogError, match="md5 mismatch"):
        await uploader.put(platform.presign(k), stream_of(source), len(DATA), "video/mp4")

    assert_cut(platform, k, at_most=len(DATA) - TAIL)
    assert source.closed.wait(5)


async def test_a_read_failing_midway_fails_the_upload_with_the_catalog_s_error(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key(request)
    # Read on the sending thread: the catalog's error, not the cut request's, is what the job sees.
    source = MemorySource(DATA, failure=CatalogUnavailable("connection cut 6 times"), fail_at=len(DATA) // 2)

    with pytest.raises(CatalogUnavailable, match="cut 6 times"):
        await uploader.put(platform.presign(k), stream_of(source), len(DATA), "video/mp4")

    assert_cut(platform, k)
    assert source.closed.wait(5)


async def test_an_empty_master_is_checked_and_stored(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key(request)
    source = MemorySource(b"")

    delivered = await uploader.put(platform.presign(k), stream_of(source), 0, "video/mp4",
                                   expected_sha256=hashlib.sha256(b"").hexdigest())

    assert (delivered.bytes, delivered.sha256) == (0, hashlib.sha256(b"").hexdigest())
    stored = platform.stored(k)
    assert stored is not None and stored.read_bytes() == b""
    assert source.closed.wait(5)


async def test_a_refusal_before_the_body_is_sent_stops_the_reading(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    url = platform.presign(key(request)).replace("X-Amz-Signature=", "X-Amz-Signature=0")
    source = MemorySource(DATA)

    with pytest.raises(Refused) as refused:
        await uploader.put(url, stream_of(source), len(DATA), "video/mp4")

    assert refused.value.http_status == 403
    assert source.closed.wait(5)


async def test_a_cancelled_upload_closes_the_source_and_cuts_the_put(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key(request)
    source = MemorySource(DATA)
    platform.slow_uploads(256 * 1024)
    try:
        put = asyncio.create_task(uploader.put(platform.presign(k), stream_of(source), len(DATA), "video/mp4"))
        await asyncio.to_thread(platform.wait_for_bytes, k, 1)
        put.cancel()
        with pytest.raises(asyncio.CancelledError):
            await put
    finally:
        platform.slow_uploads(None)

    assert source.closed.wait(5)
    assert_cut(platform, k)
