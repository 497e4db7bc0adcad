"""Measure a master's picture from a few range reads: width, height, rotation and display aspect.

Why our own parsers: the worker measures every master before it streams it,
from range reads over S3, Drive or a local file (asynchronous, each a round
trip), so the parser must say which bytes it needs and read nothing else, must
never hold a master, and must turn hostile headers into a plain refusal. The
libraries on PyPI did not fit. hachoir (pure Python, broad) is GPL-2.0, parses
from a synchronous stream into a tree of every field, and its ISO BMFF parser
has no HEIF item properties (AVIF's ``ispe`` and ``irot``). pymediainfo wraps
the native MediaInfo library: C++ parsing untrusted masters in the worker's
process, through a synchronous file-like object it seeks freely. PyAV and
ffprobe bring FFmpeg's demuxers for a task that needs four numbers. Pillow,
imagesize and exifread read still images only (videos are most masters);
pymp4 and ebmlite each cover one container. What we need is small and fixed
by the formats' specifications: a handful of boxes (ISO/IEC 14496-12 and
HEIF), of EBML elements (Matroska), of JPEG markers with one EXIF tag, and
the first chunk of PNG and WebP. The parsers are here, one module per family,
with bounds checked on every read (``base.uint``), and tested on real files
made by ffmpeg, exiftool and avifenc and on random and cut bytes.

What is read: the first :data:`HEAD_BYTES` in one call; for an MP4/MOV whose
``moov`` lies past them, a 16-byte read per top-level box header after the
head and then the ``moov`` box alone (at most ``bmff.MOOV_LIMIT``). Errors of
the reader itself (the network, the catalog) are passed on untouched: they
may be transient, where an :class:`Unmeasurable` is about the file.
"""

from __future__ import annotations

from fulfiller.measure.aspect import aspect_name, same_aspect, spelled_aspect
from fulfiller.measure.base import HEAD_BYTES, Measured, RangeReader, Unmeasurable
from fulfiller.measure.bmff import is_bmff, measure_bmff
from fulfiller.measure.ebml import is_ebml, measure_ebml
from fulfiller.measure.stills import measure_still, still_format

__all__ = ["HEAD_BYTES", "Measured", "RangeReader", "Unmeasurable", "aspect_name", "measure", "same_aspect",
           "spelled_aspect"]


async def measure(read: RangeReader, size: int) -> Measured:
    """The picture of the ``size``-byte file that ``read`` serves; Unmeasurable when it cannot be read."""
    if size <= 0:
        raise Unmeasurable("empty file")
    head = (await read(0, min(HEAD_BYTES, size)))[:HEAD_BYTES]
    if len(head) < min(HEAD_BYTES, size):  # the file is shorter than its listing said: all of it is here
        size = len(head)
    try:
        if is_bmff(head):
            return await measure_bmff(head, read, size)
        if is_ebml(head):
            return measure_ebml(head)
        if fmt := still_format(head):
            return measure_still(head, fmt)
    except (ValueError, IndexError, OverflowError) as exc:  # a slip in a parser: still the file's fault
        raise Unmeasurable(f"corrupt header ({type(exc).__name__})") from exc
    raise Unmeasurable("not a video or image format the platform takes")
