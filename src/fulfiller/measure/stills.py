"""Still images: JPEG (frame header and EXIF orientation), PNG (IHDR) and WebP (VP8, VP8L, VP8X).

Each keeps its size in its first bytes; only JPEG also turns its picture, with
the EXIF Orientation tag, which cameras and phones write instead of turning the
pixels (5 to 8 swap the sides; a mirror changes no aspect).
"""

from __future__ import annotations

from fulfiller.measure.base import Measured, Unmeasurable, uint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG frame headers (SOF0-15), less DHT (C4), JPG (C8) and DAC (CC), which share the range.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length
# EXIF orientation -> clockwise turn (2, 4, 5, 7 also mirror, which changes no aspect).
_ORIENTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 270, 6: 90, 7: 90, 8: 270}
_ORIENTATION_TAG, _EXIF = 0x0112, b"Exif\0\0"


def still_format(head: bytes) -> str | None:
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == PNG_SIGNATURE:
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def measure_still(head: bytes, fmt: str) -> Measured:
    return {"jpg": _jpeg, "png": _png, "webp": _webp}[fmt](head)


def _png(head: bytes) -> Measured:
    if head[12:16] != b"IHDR":
        raise Unmeasurable("PNG without IHDR first")
    return Measured.build("png", uint(head, 16, 4), uint(head, 20, 4))


def _webp(head: bytes) -> Measured:
    chunk = head[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if head[23:26] != b"\x9d\x01\x2a":
            raise Unmeasurable("WebP VP8 frame without a start code")
        return Measured.build("webp", uint(head, 26, 2, little=True) & 0x3FFF, uint(head, 28, 2, little=True) & 0x3FFF)
    if chunk == b"VP8L":  # lossless: a signature byte, then two 14-bit sizes less one
        if uint(head, 20, 1) != 0x2F:
            raise Unmeasurable("WebP VP8L without its signature")
        bits = uint(head, 21, 4, little=True)
        return Measured.build("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: the canvas, 24-bit sizes less one
        return Measured.build("webp", uint(head, 24, 3, little=True) + 1, uint(head, 27, 3, little=True) + 1)
    raise Unmeasurable(f"WebP with an unknown first chunk {chunk.decode('latin-1')!r}")


def _jpeg(head: bytes) -> Measured:
    pos, rotation = 2, 0
    while True:
        if uint(head, pos, 1) != 0xFF:
            raise Unmeasurable("JPEG marker expected")
        while uint(head, pos, 1) == 0xFF:  # fill bytes may pad before a marker
            pos += 1
        marker = uint(head, pos, 1)
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise Unmeasurable("JPEG scan begins before any frame header")
        length = uint(head, pos, 2)
        if length < 2:
            raise Unmeasurable("JPEG segment of impossible length")
        if marker in _SOF:
            return Measured.build("jpg", uint(head, pos + 5, 2), uint(head, pos + 3, 2), rotation=rotation)
        if marker == 0xE1 and head[pos + 2:pos + 8] == _EXIF:
            rotation = _exif_rotation(head[pos + 8:pos + length])
        pos += length


def _exif_rotation(tiff: bytes) -> int:
    """The clockwise turn EXIF's IFD0 Orientation asks for; 0 when the tag is absent or unreadable."""
    little = tiff[:2] == b"II"
    if not little and tiff[:2] != b"MM":
        return 0
    try:
        ifd = uint(tiff, 4, 4, little=little)
        for i in range(uint(tiff, ifd, 2, little=little)):
            entry = ifd + 2 + 12 * i
            if uint(tiff, entry, 2, little=little) == _ORIENTATION_TAG:
                return _ORIENTATION.get(uint(tiff, entry + 8, 2, little=little), 0)
    except Unmeasurable:  # a broken EXIF block does not hide the frame's size
        return 0
    return 0
