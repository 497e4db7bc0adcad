"""The layout filled in for one request: the folders to look in, and the last segment as a name pattern.

Layout fields come from webhook payloads, so every placeholder value must stay
one path segment (SPEC, "Layout placeholders"): a value that could split a
segment or name a parent finds nothing, without a request to the backend.

The last segment is not a literal name but a pattern (``fulfiller.naming``):
real catalogs hold ``HRT-1212_final_1080x1920.mp4``, not ``9x16.mp4``. It is
filled with every value but ``{aspect}``, each escaped so a code like ``HRT*1``
matches itself rather than globbing; ``{aspect}`` stays for ``naming`` to match
in any spelling. In a folder segment ``{aspect}`` is filled literally, as it
always was. The catalog lists the folder and keeps the names the pattern
matches (:func:`matching`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fulfiller.measure.aspect import same_aspect
from fulfiller.naming import ASPECT, escape, match_names

if TYPE_CHECKING:
    from fulfiller.catalogs.base import Master

# The longest name a file system (ext4, APFS, NTFS) or a synced Drive folder holds, in UTF-8 bytes.
MAX_SEGMENT_BYTES = 255
# A character that would split a segment in some catalog ("/" everywhere, "\\" on Windows shares) or that no
# file system, S3 key or Drive name should be asked for (NUL, C0 and C1 controls, DEL).
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


def fits_one_segment(text: str) -> bool:
    """True when ``text`` can stand in a single path segment of every catalog type (it may be empty)."""
    if text in (".", "..") or _UNSAFE_CHARS.search(text):
        return False
    try:
        return len(text.encode()) <= MAX_SEGMENT_BYTES
    except UnicodeEncodeError:  # a lone surrogate: nothing can be named by it
        return False


def render_layout(layout: str, fields: Mapping[str, Any]) -> tuple[list[str], str] | None:
    """Fill the layout template: the folder segments, and the last segment as a ``naming`` pattern.

    Only the layout's own ``/`` separates segments: a placeholder value is one
    segment at most. None when a value is not a safe part of one segment (it
    holds a separator or a control character, is ``.`` or ``..``, or is too
    long), or when a segment holding a placeholder comes out empty, ``.``,
    ``..`` or too long (the last one judged with ``{aspect}`` filled in): such
    a request matches nothing in any catalog, and asking the backend would only
    cost a call or walk out of the root. Empty segments of the layout's own
    text (``a//b``) are dropped.
    """
    formatter = string.Formatter()
    segments = [""]  # filled literally: what is checked, and the folders
    patterns = [""]  # the same with values escaped and {aspect} kept: the last one is the name pattern
    filled: set[int] = set()  # indexes of the segments a placeholder wrote into
    for literal, name, spec, conversion in formatter.parse(layout):
        first, *more = literal.split("/")
        segments[-1] += first
        patterns[-1] += first.replace("{", "[{]")  # a "{{" of the layout's own is a brace, not a placeholder
        segments.extend(more)
        patterns.extend(part.replace("{", "[{]") for part in more)
        if name is None:
            continue
        value = formatter.convert_field(formatter.get_field(name, (), fields)[0], conversion)
        text = formatter.format_field(value, spec or "")
        if not fits_one_segment(text):
            return None
        segments[-1] += text
        patterns[-1] += ASPECT if name == "aspect" else escape(text)
        filled.add(len(segments) - 1)
    kept = [i for i, seg in enumerate(segments) if seg or i in filled]
    if not kept or not all(segments[i] and fits_one_segment(segments[i]) for i in kept):
        return None
    *folders, last = kept
    return [segments[i] for i in folders], patterns[last]


def matching(files: Iterable[Master], pattern: str, kind: str, aspect: str | None) -> list[Master]:
    """The files whose names ``pattern`` matches for ``kind``, best first, each with its ``named_aspect``.

    With ``{aspect}`` in the pattern, only names spelling ``aspect`` (within
    2%) are kept; without, every match is (measurement decides later). Files
    sharing a name (Drive allows it) keep the order they were listed in.
    """
    by_name: dict[str, list[Master]] = {}
    for master in files:
        by_name.setdefault(master.name, []).append(master)
    spells_aspect = ASPECT in pattern
    found: list[Master] = []
    for hit in match_names(pattern, kind, by_name):
        if spells_aspect and not (aspect and hit.aspect and same_aspect(hit.aspect, aspect)):
            continue
        found.extend(replace(master, named_aspect=hit.aspect) for master in by_name[hit.name])
    return found
