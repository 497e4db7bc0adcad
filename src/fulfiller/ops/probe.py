"""``fulfiller probe FILE...``: measure files on this machine exactly as the worker measures masters.

The same range reads (``measure.measure`` over ``os.pread``), so what probe says
about a file is what a delivery would decide about it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence

from fulfiller.measure import Measured, RangeReader, Unmeasurable, measure

EXIT_OK, EXIT_UNREADABLE = 0, 1


def _reader(fd: int) -> RangeReader:
    async def read(offset: int, length: int) -> bytes:
        return await asyncio.to_thread(os.pread, fd, length, offset)

    return read


async def _measure_file(path: str) -> Measured:
    fd = os.open(path, os.O_RDONLY)
    try:
        return await measure(_reader(fd), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _line(path: str, found: Measured) -> str:
    coded = f" (coded {found.width}x{found.height})" if found.rotation or (
        (found.width, found.height) != (found.display_width, found.display_height)) else ""
    return (f"{path}: {found.format} {found.display_width}x{found.display_height}{coded}, "
            f"rotation {found.rotation}, aspect {found.aspect}")


async def probe(paths: Sequence[str], as_json: bool, out: Callable[[str], None]) -> int:
    """A line per file; exit 1 when any could not be read or measured (the others are still reported)."""
    status = EXIT_OK
    for path in paths:
        try:
            found = await _measure_file(path)
        except (OSError, Unmeasurable) as exc:
            status = EXIT_UNREADABLE
            reason = (f"unmeasurable: {exc.reason}" if isinstance(exc, Unmeasurable)
                      else f"cannot read: {exc.strerror or exc}")
            out(json.dumps({"file": path, "error": reason}) if as_json else f"{path}: {reason}")
            continue
        out(json.dumps({"file": path, "format": found.format, **found.to_json()}) if as_json
            else _line(path, found))
    return status
