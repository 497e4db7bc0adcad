"""Hostile and broken bytes end a measurement with Unmeasurable: never another exception, a hang or a big read.

Random bytes, every fixture cut short, fixtures with bytes changed in their
headers (where a length field lies), and hand-made headers that claim what no
real file does.
"""

from __future__ import annotations

import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fulfiller.measure import HEAD_BYTES, Measured, Unmeasurable, measure
from fulfiller.measure.bmff import MAX_HOPS, MOOV_LIMIT

MEDIA = Path(__file__).resolve().parents[1] / "media"
FILES = sorted(p for p in MEDIA.rglob("*") if p.is_file() and p.suffix not in (".md", ".sh"))
SMALL = {str(p.relative_to(MEDIA)): p.read_bytes() for p in FILES if p.stat().st_size < HEAD_BYTES}
# The most one read may ask for: the head, or a moov at its limit.
LARGEST_READ = max(HEAD_BYTES, MOOV_LIMIT)
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _run(coroutine: Coroutine[Any, Any, Measured]) -> Measured:
    """Run a measurement whose reads never wait: it ends at its first step (an event loop per try is slow)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise AssertionError("the measurement waited on something other than its reads")


def outcome(data: bytes, size: int | None = None) -> Measured | str:
    """What measuring ``data`` (said to be ``size`` bytes long) gives: a Measured, or the Unmeasurable reason."""
    asked: list[int] = []

    async def read(offset: int, length: int) -> bytes:
        assert 0 <= offset and 0 < length <= LARGEST_READ
        asked.append(length)
        return data[offset:offset + length]

    try:
        return _run(measure(read, len(data) if size is None else size))
    except Unmeasurable as exc:
        assert exc.reason and "\n" not in exc.reason
        return exc.reason
    finally:
        assert len(asked) <= MAX_HOPS + 3


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    outcome(data)


@FUZZ
@given(st.sampled_from([b"\0\0\0\x18ftypisom", b"\x1a\x45\xdf\xa3", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n",
                        b"RIFF\0\0\0\0WEBPVP8X", b"\0\0\0\x08moov"]), st.binary(max_size=600))
def test_random_bytes_behind_a_real_signature(signature: bytes, rest: bytes) -> None:
    outcome(signature + rest)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_cut_of_a_fixture(name: str) -> None:
    data = SMALL[name]
    for cut in sorted({*range(0, min(len(data), 700)), *range(700, len(data), 37)}):
        result = outcome(data[:cut])
        # A cut file is measured right or not at all: never a wrong picture.
        if isinstance(result, Measured):
            assert result == outcome(data)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_file_shorter_than_its_listing(name: str) -> None:
    data = SMALL[name]
    assert outcome(data[: len(data) // 2], size=len(data) * 1000) is not None


@FUZZ
@given(st.sampled_from(sorted(SMALL)), st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)),
                                                 min_size=1, max_size=8), st.booleans())
def test_bytes_changed_in_the_headers(name: str, changes: list[tuple[int, int]], at_end: bool) -> None:
    data = bytearray(SMALL[name])
    for where, value in changes:
        # The head's first 600 bytes, or the last 1500 (an end-of-file moov).
        index = where % min(600, len(data)) if not at_end else len(data) - 1 - where % min(1500, len(data))
        data[index] = value
    outcome(bytes(data))


def _box(kind: bytes, payload: bytes = b"", size: int | None = None) -> bytes:
    return struct.pack(">I4s", 8 + len(payload) if size is None else size, kind) + payload


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"GIF89a" + bytes(20), "not a video or image format"),
    (_box(b"ftyp", b"heic\0\0\0\0mif1heic") + _box(b"meta", bytes(4)), "HEIF image"),
    (_box(b"ftyp", b"isom\0\0\0\0") + _box(b"moov", _box(b"trak", _box(b"tkhd", bytes(40)))), "no video track"),
    (_box(b"ftyp", b"isom\0\0\0\0") + _box(b"moov", size=4), "cut short"),
    (_box(b"ftyp", b"isom\0\0\0\0") + _box(b"mdat", bytes(8)), "no moov box"),
    (b"\x1a\x45\xdf\xa3\x84\x42\x82\x81x", "document type 'x'"),
    (b"\x1a\x45\xdf\xa3\x00", "longer than 8 bytes"),
    (b"\xff\xd8\xff\xda\x00\x02", "scan begins before any frame header"),
    (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x01\x40", "picture size 320x0"),
    (b"RIFF\0\0\0\0WEBPABCD" + bytes(20), "unknown first chunk"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\0\0\0\0\0", "picture size 0x0"),
])
def test_made_up_headers_say_what_is_wrong(data: bytes, reason: str) -> None:
    assert reason in outcome(data)


def test_a_chain_of_boxes_past_the_head_is_not_followed_for_ever() -> None:
    head = _box(b"ftyp", b"isom\0\0\0\0") + _box(b"free", bytes(HEAD_BYTES))
    data = head + _box(b"free") * (MAX_HOPS + 50) + _box(b"moov")
    assert outcome(data) == "too many boxes before moov"
