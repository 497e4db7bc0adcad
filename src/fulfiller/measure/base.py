"""What a measurement is, what it reads from, and how it fails.

Shared by the container parsers: they raise :class:`Unmeasurable` with a short
plain reason for anything they cannot read, and read integers through
:func:`uint`, which refuses to look past the bytes it was given, so a hostile
length field ends the measurement instead of raising ``IndexError``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fulfiller.measure.aspect import aspect_name

# (offset, length) -> the bytes there; fewer only at the end of the file.
RangeReader = Callable[[int, int], Awaitable[bytes]]

# Every container keeps what we need near its start, except an MP4/MOV's moov (see bmff.py).
HEAD_BYTES = 256 * 1024


class Unmeasurable(Exception):
    """The picture's size cannot be read: unknown format, truncated or corrupt headers."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Measured:
    """A master's picture.

    ``width``/``height`` are the coded size (the pixels the decoder makes).
    ``display_width``/``display_height`` are what a viewer sees: after the
    container's display size (a track header's presentation size, Matroska's
    DisplayWidth/DisplayHeight) and after ``rotation``, the clockwise turn a
    player applies (90 and 270 swap the sides). The aspect and the JSON
    (SPEC's ``measured`` object) speak of the displayed picture, since that
    is what the platform checks a placement against.
    """

    format: str
    width: int
    height: int
    rotation: int
    display_width: int
    display_height: int

    @classmethod
    def build(cls, fmt: str, width: int, height: int, rotation: int = 0,
              shown: tuple[int, int] | None = None) -> Measured:
        """``shown``: the container's display size before rotation (default: the coded size)."""
        if width <= 0 or height <= 0:
            raise Unmeasurable(f"{fmt}: picture size {width}x{height}")
        shown_w, shown_h = shown if shown and shown[0] > 0 and shown[1] > 0 else (width, height)
        if rotation in (90, 270):
            shown_w, shown_h = shown_h, shown_w
        return cls(fmt, width, height, rotation, shown_w, shown_h)

    @property
    def aspect(self) -> str:
        return aspect_name(self.display_width, self.display_height)

    def to_json(self) -> dict[str, int | str]:
        return {"width": self.display_width, "height": self.display_height, "rotation": self.rotation,
                "aspect": self.aspect}


def uint(data: bytes, offset: int, size: int, *, little: bool = False) -> int:
    """The unsigned integer of ``size`` bytes at ``offset``; Unmeasurable when the bytes end first."""
    if offset < 0 or offset + size > len(data):
        raise Unmeasurable("truncated header")
    return int.from_bytes(data[offset:offset + size], "little" if little else "big")
