"""The Uploader against the R2-like upload endpoint of the platform double (a real server on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncGenerator

import pytest

from fulfiller.delivery.transfer import ChecksumMismatch, Refused, SizeMismatch, Uploader
from fulfiller.retry import Transient
from support.platform import PlatformDouble

DATA = random.Random(7).randbytes(3 * 1024 * 1024 + 123)
CHUNK = 256 * 1024


async def chunks(data: bytes, size: int = CHUNK) -> AsyncGenerator[bytes, None]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def key(name: str, request: pytest.FixtureRequest) -> str:
    return f"transfer/{request.node.name}/{name}"


async def test_the_bytes_arrive_whole_with_their_length_type_and_hash(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key("master.mp4", request)

    delivered = await uploader.put(platform.presign(k), chunks(DATA), len(DATA), "video/mp4")

    assert (delivered.bytes, delivered.http_status) == (len(DATA), 200)
    assert delivered.sha256 == hashlib.sha256(DATA).hexdigest()
    [upload] = platform.uploads(k)
    # An exact Content-Length and no chunked encoding: what a pre-signed S3-style PUT insists on.
    assert (upload.content_length, upload.transfer_encoding, upload.content_type) == (len(DATA), None, "video/mp4")
    stored = platform.stored(k)
    assert stored is not None and stored.read_bytes() == DATA


async def test_a_matching_published_checksum_lets_the_upload_complete(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key("master.mp4", request)
    digest = hashlib.sha256(DATA).hexdigest()

    delivered = await uploader.put(platform.presign(k), chunks(DATA), len(DATA), "video/mp4", expected_sha256=digest)

    assert delivered.sha256 == digest


@pytest.mark.parametrize(
    ("source", "declared", "error", "message"),
    [
        (DATA[:-1000], len(DATA), SizeMismatch, "ended at"),
        (DATA + b"extra", len(DATA), SizeMismatch, "grew past"),
    ],
    ids=["short", "long"],
)
async def test_a_master_of_the_wrong_size_is_never_stored(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest,
    source: bytes, declared: int, error: type[Exception], message: str,
) -> None:
    k = key("master.mp4", request)

    with pytest.raises(error, match=message):
        await uploader.put(platform.presign(k), chunks(source), declared, "video/mp4")

    [upload] = platform.wait_for_uploads(1, key=k)
    assert upload.outcome == "disconnected" and upload.received < declared
    assert platform.stored(k) is None


async def test_a_checksum_mismatch_holds_back_the_last_chunk(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key("master.mp4", request)

    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        await uploader.put(platform.presign(k), chunks(DATA), len(DATA), "video/mp4", expected_sha256="0" * 64)

    [upload] = platform.wait_for_uploads(1, key=k)
    assert upload.outcome == "disconnected"
    assert upload.received <= len(DATA) - (len(DATA) % CHUNK)  # everything but the final chunk, at most
    assert platform.stored(k) is None


async def test_a_bad_signature_is_refused_with_the_peer_s_answer(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    url = platform.presign(key("master.mp4", request)).replace("X-Amz-Signature=", "X-Amz-Signature=0")

    with pytest.raises(Refused) as refused:
        await uploader.put(url, chunks(DATA), len(DATA), "video/mp4")

    assert refused.value.http_status == 403
    assert "SignatureDoesNotMatch" in refused.value.body


async def test_5xx_is_transient_and_says_when_to_retry(
    platform: PlatformDouble, uploader: Uploader, request: pytest.FixtureRequest
) -> None:
    k = key("master.mp4", request)
    platform.fail_uploads(1, 503, key=k, retry_after="7")

    with pytest.raises(Transient) as transient:
        await uploader.put(platform.presign(k), chunks(DATA), len(DATA), "video/mp4")

    assert (transient.value.http_status, transient.value.retry_after) == (503, 7.0)


async def test_an_unreachable_host_is_transient_and_its_error_keeps_no_signature(uploader: Uploader) -> None:
    url = "http://127.0.0.1:9/r2/key.mp4?X-Amz-Signature=topsecret"

    with pytest.raises(Transient, match="upload failed") as transient:
        await uploader.put(url, chunks(DATA), len(DATA), "video/mp4")

    assert "topsecret" not in str(transient.value)
