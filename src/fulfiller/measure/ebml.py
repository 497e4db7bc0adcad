"""Matroska and WebM (EBML): the first video track's PixelWidth/PixelHeight and display size.

Muxers write ``Tracks`` before the first ``Cluster`` (ffmpeg, mkvmerge, browsers'
MediaRecorder), so it sits in the head: a file whose head reaches a ``Cluster``
first, or ends before ``Tracks`` does, is unmeasurable rather than searched.
The display size is DisplayWidth/DisplayHeight when set (in pixels, or as a
ratio when DisplayUnit says so), else the pixel size less its crops, as the
Matroska specification defines the defaults.
"""

from __future__ import annotations

from collections.abc import Iterator

from fulfiller.measure.base import Measured, Unmeasurable, uint

EBML, DOCTYPE = 0x1A45DFA3, 0x4282
SEGMENT, TRACKS, CLUSTER, TRACK_ENTRY, TRACK_TYPE, VIDEO = 0x18538067, 0x1654AE6B, 0x1F43B675, 0xAE, 0x83, 0xE0
PIXEL_WIDTH, PIXEL_HEIGHT, DISPLAY_WIDTH, DISPLAY_HEIGHT, DISPLAY_UNIT = 0xB0, 0xBA, 0x54B0, 0x54BA, 0x54B2
CROP_BOTTOM, CROP_TOP, CROP_LEFT, CROP_RIGHT = 0x54AA, 0x54BB, 0x54CC, 0x54DD
VIDEO_TRACK = 1
UNKNOWN = -1  # an element of unknown size (live streams): it runs to the end of its parent
DOCTYPES = {b"webm": "webm", b"matroska": "mkv"}


def is_ebml(head: bytes) -> bool:
    return head[:4] == EBML.to_bytes(4, "big")


def _vint(data: bytes, pos: int, *, marker: bool) -> tuple[int, int]:
    """(value, length) of the variable-length integer at ``pos``; an ID keeps its marker bit, a size does not."""
    first = uint(data, pos, 1)
    if first == 0:
        raise Unmeasurable("EBML number longer than 8 bytes")
    length = 9 - first.bit_length()
    value = uint(data, pos, length)
    if marker:
        return value, length
    value &= (1 << (7 * length)) - 1
    return (UNKNOWN if value == (1 << (7 * length)) - 1 else value), length


def elements(data: bytes, start: int, end: int, *, clip: bool = False) -> Iterator[tuple[int, int, int]]:
    """(ID, payload start, payload end) of each element in ``data[start:end]``; unknown sizes run to ``end``.

    ``clip``: an element that runs past ``end`` is yielded cut there (the segment, of which the head holds
    only the start); otherwise it is a truncated file.
    """
    pos = start
    while pos < end:
        element_id, id_len = _vint(data, pos, marker=True)
        size, size_len = _vint(data, pos + id_len, marker=False)
        body = pos + id_len + size_len
        stop = end if size == UNKNOWN else body + size
        if stop > end and not clip:
            raise Unmeasurable("the head ends inside the track headers")
        yield element_id, body, min(stop, end)
        pos = stop


def _uints(data: bytes, start: int, end: int) -> dict[int, int]:
    """The unsigned integer children of a master element, by ID (first one wins)."""
    found: dict[int, int] = {}
    for element_id, s, e in elements(data, start, end):
        if e - s <= 8 and element_id not in found:
            found[element_id] = uint(data, s, e - s)
    return found


def measure_ebml(head: bytes) -> Measured:
    header = next(elements(head, 0, len(head)), None)
    if not header or header[0] != EBML:
        raise Unmeasurable("not an EBML file")
    doctype = next((head[s:e].rstrip(b"\0") for i, s, e in elements(head, header[1], header[2]) if i == DOCTYPE), b"")
    fmt = DOCTYPES.get(doctype)
    if fmt is None:
        raise Unmeasurable(f"EBML document type {doctype.decode('latin-1')!r}, not Matroska or WebM")
    segment = next(elements(head, header[2], len(head), clip=True), None)
    if not segment or segment[0] != SEGMENT:
        raise Unmeasurable("no Matroska segment")
    for element_id, s, e in elements(head, segment[1], segment[2], clip=True):
        if element_id == CLUSTER:
            break
        if element_id == TRACKS:
            return _video(head, s, e, fmt)
    raise Unmeasurable("no track headers before the first cluster or in the first 256 KiB")


def _video(data: bytes, start: int, end: int, fmt: str) -> Measured:
    for element_id, s, e in elements(data, start, end):
        if element_id != TRACK_ENTRY:
            continue
        video = next(((a, b) for i, a, b in elements(data, s, e) if i == VIDEO), None)
        if video is None or _uints(data, s, e).get(TRACK_TYPE) != VIDEO_TRACK:
            continue
        v = _uints(data, *video)
        width, height = v.get(PIXEL_WIDTH, 0), v.get(PIXEL_HEIGHT, 0)
        cropped = (width - v.get(CROP_LEFT, 0) - v.get(CROP_RIGHT, 0),
                   height - v.get(CROP_TOP, 0) - v.get(CROP_BOTTOM, 0))
        shown = cropped
        if DISPLAY_WIDTH in v and DISPLAY_HEIGHT in v and v[DISPLAY_HEIGHT] > 0:
            if v.get(DISPLAY_UNIT, 0) == 0:
                shown = (v[DISPLAY_WIDTH], v[DISPLAY_HEIGHT])
            else:  # centimetres, inches or an aspect ratio: only the ratio means anything for the picture
                shown = (round(cropped[1] * v[DISPLAY_WIDTH] / v[DISPLAY_HEIGHT]), cropped[1])
        return Measured.build(fmt, width, height, shown=shown)
    raise Unmeasurable("no video track")
