"""Aspect names: a picture's size named as the platform names aspects, and an aspect read from a file name.

The platform speaks of aspects as ``WxH`` (``9x16``, ``4x5``...). A measured
picture is rarely exact (1080x1908, an encoder's even-size rounding), so a size
within 2% of a known aspect takes that aspect's name; anything else is named
``W:H`` reduced, a spelling no request uses, so it can never be taken for one.
File names spell aspects every way a person types them; :func:`spelled_aspect`
reads them back to the platform's spelling.
"""

from __future__ import annotations

import re
from math import gcd

# The aspects ad placements use (the platform's families ask for 9x16, 1x1, 3x4, 4x5), and their turned twins.
KNOWN_ASPECTS = ("9x16", "16x9", "4x5", "5x4", "1x1", "3x4", "4x3", "2x3", "3x2")
TOLERANCE = 0.02
# The spellings of one aspect: 9x16, 9X16, 9×16, 9_16, 9-16, 9by16, 9:16. Five digits cover any pixel size.
SPELLING = r"(?<![0-9])[0-9]{1,5}(?:x|×|_|-|by|:)[0-9]{1,5}(?![0-9])"
_SPELLED = re.compile(r"([0-9]{1,5})(?:x|×|_|-|by|:)([0-9]{1,5})", re.IGNORECASE)
# Below this, both terms read as an aspect written out (2x1); at or above it, as a picture's size in pixels.
_PIXELS = 100


def _ratio_of(name: str) -> float:
    w, _, h = name.partition("x")
    return int(w) / int(h)


_KNOWN = tuple((name, _ratio_of(name)) for name in KNOWN_ASPECTS)


def _close(ratio: float, other: float) -> bool:
    return abs(ratio / other - 1) <= TOLERANCE


def _known(width: int, height: int) -> str | None:
    ratio = width / height
    return next((name for name, known in _KNOWN if _close(ratio, known)), None)


def aspect_name(width: int, height: int) -> str:
    """``9x16`` when ``width:height`` is within 2% of a known aspect, else ``W:H`` reduced (``5:7``)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"no aspect for {width}x{height}")
    if known := _known(width, height):
        return known
    d = gcd(width, height)
    return f"{width // d}:{height // d}"


def spelled_aspect(text: str) -> str | None:
    """The aspect a name spells, in the platform's spelling, case blind; None when it spells none.

    ``9x16``, ``9_16``, ``9-16``, ``9by16``, ``9:16`` read ``9x16``; so do
    pixel sizes whose ratio is within 2% of a known aspect (``1080x1920``,
    ``720x1280``). A small ``WxH`` (both under 100) reads as itself, reduced
    (``2x1``, ``18x32`` -> ``9x16``); a pixel size off the known list reads as
    nothing (``1234x567`` is no aspect anyone asks for).
    """
    match = _SPELLED.fullmatch(text.strip())
    if not match:
        return None
    width, height = int(match[1]), int(match[2])
    if width == 0 or height == 0:
        return None
    if width < _PIXELS and height < _PIXELS:  # written as an aspect: exact, so 29x16 is not taken for 16x9
        d = gcd(width, height)
        return f"{width // d}x{height // d}"
    return _known(width, height)


def same_aspect(one: str, other: str) -> bool:
    """True when two aspects (any spelling, or a measured ``W:H``) are within 2% of each other."""
    ratios = []
    for text in (one, other):
        match = _SPELLED.fullmatch(text.strip())
        if not match or int(match[1]) == 0 or int(match[2]) == 0:
            return False
        ratios.append(int(match[1]) / int(match[2]))
    return _close(ratios[0], ratios[1])
