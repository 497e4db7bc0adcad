"""Header variants the fixtures do not hold, built byte by byte from the formats' specifications."""

from __future__ import annotations

import struct

import pytest

from fulfiller.measure import Measured, measure


def box(kind: bytes, *children: bytes) -> bytes:
    payload = b"".join(children)
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def tkhd(width: int, height: int, matrix: tuple[int, int, int, int], version: int = 0) -> bytes:
    times = bytes(32) if version == 1 else bytes(20)  # creation, modification, track id, reserved, duration
    a, b, c, d = (round(v * 65536) for v in matrix)
    full = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30)
    size = struct.pack(">II", width << 16, height << 16)  # 16.16 fixed point
    return box(b"tkhd", bytes([version, 0, 0, 3]), times, bytes(16), full, size)


def trak(handler: bytes, header: bytes) -> bytes:
    return box(b"trak", header, box(b"mdia", box(b"hdlr", bytes(8), handler, bytes(12))))


def mp4(*tracks: bytes) -> bytes:
    return box(b"ftyp", b"isom", bytes(4), b"isomiso2") + box(b"moov", *tracks)


async def measured(data: bytes) -> Measured:
    async def read(offset: int, length: int) -> bytes:
        return data[offset:offset + length]

    return await measure(read, len(data))


@pytest.mark.parametrize("matrix, rotation", [
    ((1, 0, 0, 1), 0), ((0, 1, -1, 0), 90), ((-1, 0, 0, -1), 180), ((0, -1, 1, 0), 270),
    ((0, 2, -2, 0), 90),  # scaled: the turn is still a quarter
])
@pytest.mark.parametrize("version", [0, 1])
async def test_track_header_matrix_and_version(matrix: tuple[int, int, int, int], rotation: int, version: int) -> None:
    found = await measured(mp4(trak(b"soun", tkhd(0, 0, (1, 0, 0, 1))), trak(b"vide", tkhd(320, 180, matrix, version))))
    shown = (180, 320) if rotation in (90, 270) else (320, 180)
    assert (found.format, found.rotation, found.display_width, found.display_height) == ("mp4", rotation, *shown)
    # No sample description: the coded size is the track header's.
    assert (found.width, found.height) == (320, 180)


def ebml(element_id: int, *children: bytes) -> bytes:
    """An element with a two-byte size (EBML lets a writer use any length that holds it)."""
    payload = b"".join(children)
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + (0x4000 | len(payload)).to_bytes(
        2, "big") + payload


def uint_element(element_id: int, value: int) -> bytes:
    return ebml(element_id, value.to_bytes(2, "big"))


def matroska(video: list[bytes], doctype: bytes = b"matroska") -> bytes:
    entry = ebml(0xAE, uint_element(0x83, 1), ebml(0xE0, *video))
    audio = ebml(0xAE, uint_element(0x83, 2))
    return ebml(0x1A45DFA3, ebml(0x4282, doctype)) + ebml(0x18538067, ebml(0x1654AE6B, audio, entry))


@pytest.mark.parametrize("extra, shown", [
    ([], (320, 320)),
    ([uint_element(0x54B0, 180), uint_element(0x54BA, 320)], (180, 320)),  # display size in pixels
    ([uint_element(0x54B0, 9), uint_element(0x54BA, 16), uint_element(0x54B2, 3)], (180, 320)),  # as a ratio
    ([uint_element(0x54CC, 70), uint_element(0x54DD, 70)], (180, 320)),  # cropped left and right
])
async def test_matroska_display_size(extra: list[bytes], shown: tuple[int, int]) -> None:
    found = await measured(matroska([uint_element(0xB0, 320), uint_element(0xBA, 320), *extra]))
    assert (found.format, found.width, found.height) == ("mkv", 320, 320)
    assert (found.display_width, found.display_height) == shown


async def test_webm_doctype() -> None:
    found = await measured(matroska([uint_element(0xB0, 180), uint_element(0xBA, 320)], b"webm"))
    assert (found.format, found.aspect) == ("webm", "9x16")


@pytest.mark.parametrize("chunk, size", [
    (b"VP8L" + struct.pack("<I", 5) + b"\x2f" + struct.pack("<I", (180 - 1) | (320 - 1) << 14), (180, 320)),
    (b"VP8X" + struct.pack("<I", 10) + bytes(4) + (256 - 1).to_bytes(3, "little") + (320 - 1).to_bytes(3, "little"),
     (256, 320)),
])
async def test_webp_lossless_and_extended(chunk: bytes, size: tuple[int, int]) -> None:
    found = await measured(b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk)
    assert (found.format, found.width, found.height) == ("webp", *size)


def jpeg(orientation: int | None, byte_order: bytes) -> bytes:
    fmt = "<" if byte_order == b"II" else ">"
    tiff = byte_order + struct.pack(fmt + "HI", 42, 8)
    if orientation is not None:
        tiff += struct.pack(fmt + "H", 2) + struct.pack(fmt + "HHIHH", 0x010F, 2, 4, 0, 0) + struct.pack(
            fmt + "HHIHH", 0x0112, 3, 1, orientation, 0) + bytes(4)
    app1 = b"Exif\0\0" + tiff
    sof = b"\x08" + struct.pack(">HH", 180, 320) + b"\x01\x01\x11\x00"
    return (b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
            + b"\xff\xff\xc2" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xda")


@pytest.mark.parametrize("orientation, rotation", [(None, 0), (1, 0), (2, 0), (3, 180), (4, 180), (5, 270),
                                                   (6, 90), (7, 90), (8, 270), (9, 0)])
@pytest.mark.parametrize("byte_order", [b"II", b"MM"])
async def test_jpeg_exif_orientation(orientation: int | None, rotation: int, byte_order: bytes) -> None:
    found = await measured(jpeg(orientation, byte_order))
    assert (found.width, found.height, found.rotation) == (320, 180, rotation)
    assert found.aspect == ("9x16" if rotation in (90, 270) else "16x9")
