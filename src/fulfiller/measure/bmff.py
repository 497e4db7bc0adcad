"""ISO base media files: MP4, MOV (QuickTime) and AVIF.

MP4/MOV: the first video track's header (``moov/trak/tkhd``) gives the
presentation size and the display matrix, whose turn is the rotation (a phone
filming upright writes landscape pixels and a 90-degree matrix); the sample
description (``stsd``) gives the coded size. Encoders that write ``moov`` after
the media (ffmpeg's default) leave it out of the head: the top-level box
headers are then walked with 16-byte reads, straight to ``moov``, which is read
alone. AVIF: the primary item's ``ispe`` (size) and ``irot`` (a counter-clockwise
turn in quarters) in ``meta/iprp``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from fulfiller.measure.base import Measured, RangeReader, Unmeasurable, uint

# A moov holds the sample tables: a few MB for hours of video. Past this, it is not a master we should parse.
MOOV_LIMIT = 64 * 1024 * 1024
# Top-level boxes walked past the head before giving up: real files have a handful (mdat, free, udta).
MAX_HOPS = 256
FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
_HEIF_ONLY = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_VIDEO_HANDLERS = (b"vide", b"pict")


def is_bmff(head: bytes) -> bool:
    return len(head) >= 8 and head[4:8] in FIRST_BOXES


def _header(data: bytes, pos: int, limit: int) -> tuple[bytes, int, int]:
    """(type, header length, box size) of the box at ``pos``, whose end may not pass ``limit``."""
    size, kind = uint(data, pos, 4), data[pos + 4:pos + 8]
    header = 8
    if size == 1:
        size, header = uint(data, pos + 8, 8), 16
    elif size == 0:  # "to the end of the enclosing box / the file"
        size = limit - pos
    if size < header or pos + size > limit:
        raise Unmeasurable(f"box {kind.decode('latin-1')!r} is cut short or overruns its container")
    return kind, header, size


def boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``."""
    pos = start
    while pos + 8 <= end:
        kind, header, size = _header(data, pos, end)
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, *path: bytes) -> tuple[int, int] | None:
    """Payload bounds of the first box along ``path`` below ``data[start:end]``."""
    for kind, s, e in boxes(data, start, end):
        if kind == path[0]:
            return (s, e) if len(path) == 1 else _child(data, s, e, *path[1:])
    return None


def _format(ftyp: bytes | None) -> str:
    if ftyp is None:  # QuickTime files from before ftyp start straight with moov, mdat or wide
        return "mov"
    brands = {ftyp[i:i + 4] for i in range(0, len(ftyp) - 3, 4) if i != 4}  # major, then compatible (skip version)
    major = ftyp[:4]
    if major == b"qt  ":
        return "mov"
    if brands & {b"avif", b"avis"}:
        return "avif"
    if major in _HEIF_ONLY:
        raise Unmeasurable(f"HEIF image ({major.decode('latin-1').strip()}), not a format the platform takes")
    return "mp4"


async def measure_bmff(head: bytes, read: RangeReader, size: int) -> Measured:
    """Walk the top-level boxes to ``meta`` (AVIF) or ``moov``, reading past ``head`` only for box headers."""
    pos, hops, fmt = 0, 0, None
    ftyp: bytes | None = None
    while pos + 8 <= size:
        window, at = head, pos
        if pos + 16 > len(head) and len(head) < size:
            hops += 1
            if hops > MAX_HOPS:
                raise Unmeasurable("too many boxes before moov")
            window, at = await read(pos, 16), 0
            if len(window) < 8:
                break
        kind, header, box_size = _header(window, at, at + size - pos)
        if kind == b"ftyp":
            ftyp = await _payload(head, read, pos, header, box_size)
        elif kind in (b"moov", b"meta"):
            fmt = fmt or _format(ftyp)
            if kind == b"meta" and fmt == "avif":
                if found := _measure_meta(await _payload(head, read, pos, header, box_size)):
                    return found
            elif kind == b"moov":
                return _measure_moov(await _payload(head, read, pos, header, box_size), fmt)
        pos += box_size
    raise Unmeasurable("no moov box" if fmt != "avif" else "no image size (ispe)")


async def _payload(head: bytes, read: RangeReader, pos: int, header: int, box_size: int) -> bytes:
    if box_size > MOOV_LIMIT:
        raise Unmeasurable(f"header box of {box_size} bytes (over {MOOV_LIMIT})")
    start, end = pos + header, pos + box_size
    if end <= len(head):
        return head[start:end]
    data = (await read(start, end - start))[:end - start]
    if len(data) < end - start:
        raise Unmeasurable("file ends inside a header box")
    return data


def _measure_moov(moov: bytes, fmt: str) -> Measured:
    for kind, s, e in boxes(moov, 0, len(moov)):
        if kind == b"trak" and (found := _video_track(moov, s, e, fmt)):
            return found
    raise Unmeasurable("no video track")


def _video_track(data: bytes, start: int, end: int, fmt: str) -> Measured | None:
    hdlr = _child(data, start, end, b"mdia", b"hdlr")
    tkhd = _child(data, start, end, b"tkhd")
    if not hdlr or not tkhd or data[hdlr[0] + 8:hdlr[0] + 12] not in _VIDEO_HANDLERS:
        return None
    s = tkhd[0]
    matrix_at = s + (52 if uint(data, s, 1) == 1 else 40)  # version 1 has 64-bit times
    if matrix_at + 44 > tkhd[1]:
        raise Unmeasurable("truncated track header")
    matrix = [_signed(uint(data, matrix_at + 4 * i, 4)) for i in range(2)]
    shown = (round(uint(data, matrix_at + 36, 4) / 65536), round(uint(data, matrix_at + 40, 4) / 65536))
    coded = _sample_size(data, start, end) or shown
    return Measured.build(fmt, *coded, rotation=_rotation(*matrix), shown=shown)


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


def _rotation(a: int, b: int) -> int:
    """The clockwise turn of a display matrix whose first row is ``a b`` (QuickTime's row-vector convention)."""
    if a == 0 and b == 0:
        return 0
    return round(math.degrees(math.atan2(b, a)) / 90) % 4 * 90


def _sample_size(data: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The coded size in the first visual sample entry (``stsd``), when there is one."""
    stsd = _child(data, start, end, b"mdia", b"minf", b"stbl", b"stsd")
    if not stsd or stsd[0] + 8 + 36 > stsd[1]:
        return None
    entry = stsd[0] + 8  # after version/flags and entry_count
    return uint(data, entry + 32, 2), uint(data, entry + 34, 2)


def _measure_meta(meta: bytes) -> Measured | None:
    """The AVIF primary item's ``ispe`` and ``irot``; None when the meta box names no image size."""
    end = len(meta)
    pitm = _child(meta, 4, end, b"pitm")  # meta is a full box: 4 bytes of version/flags first
    ipco = _child(meta, 4, end, b"iprp", b"ipco")
    if not ipco:
        return None
    properties = [(kind, s, e) for kind, s, e in boxes(meta, *ipco)]
    ipma = _child(meta, 4, end, b"iprp", b"ipma")
    primary = None
    if pitm:
        primary = uint(meta, pitm[0] + 4, 2 if uint(meta, pitm[0], 1) == 0 else 4)
    chosen = _associated(meta, ipma, primary, len(properties)) if ipma else range(len(properties))
    size = rotation = None
    for index in chosen:
        kind, s, e = properties[index]
        if kind == b"ispe" and size is None and e - s >= 12:
            size = (uint(meta, s + 4, 4), uint(meta, s + 8, 4))
        elif kind == b"irot" and rotation is None and e > s:
            rotation = (4 - (uint(meta, s, 1) & 3)) % 4 * 90  # irot turns counter-clockwise
    return Measured.build("avif", *size, rotation=rotation or 0) if size else None


def _associated(meta: bytes, ipma: tuple[int, int], item: int | None, count: int) -> list[int]:
    """Indexes (0-based) of the properties ``ipma`` associates with ``item`` (or with its first item)."""
    s, _ = ipma
    version, flags = uint(meta, s, 1), uint(meta, s + 1, 3)
    pos, entries = s + 8, uint(meta, s + 4, 4)
    id_size, index_size = (2 if version < 1 else 4), (2 if flags & 1 else 1)
    for _ in range(entries):
        item_id, n = uint(meta, pos, id_size), uint(meta, pos + id_size, 1)
        pos += id_size + 1
        raw = [uint(meta, pos + i * index_size, index_size) for i in range(n)]
        pos += n * index_size
        if item is None or item_id == item:
            mask = 0x7FFF if index_size == 2 else 0x7F  # the top bit says "essential"
            return [i - 1 for i in (r & mask for r in raw) if 0 < i <= count]
    return []
