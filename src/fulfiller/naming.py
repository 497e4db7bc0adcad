"""The last segment of a catalog layout as a pattern: which names in one folder it matches.

Creative teams name masters ``HRT-1212_final_1080x1920.mp4`` or ``Story 9x16 v2
FINAL.mov``, not ``9x16.mp4``, so the layout's last segment is a pattern (SPEC,
"Real catalogs are messy"): ``*`` and ``?`` glob within the name, ``{aspect}``
matches an aspect in any spelling ``measure.aspect.spelled_aspect`` reads, and
the extension is any the request's kind allows. Matching is case blind and its
order deterministic (the kind's extension preference, then the name), so
replicas looking at one folder pick the same file.

The caller fills every other placeholder first, passing each value through
:func:`escape`: a code like ``HRT*1`` must match itself, not glob.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

from fulfiller.measure.aspect import KNOWN_ASPECTS, SPELLING, spelled_aspect
from fulfiller.media import EXTENSIONS, split_extension

ASPECT = "{aspect}"
_META = "*?[{"
# Every place an aspect is spelled, overlapping ("1-2-3" holds "1-2" and "2-3").
_SPELLINGS = re.compile(f"(?=({SPELLING}))", re.IGNORECASE)
_PLAIN = re.compile("x|×|by", re.IGNORECASE)  # separators no date or version number uses


class NameMatch(NamedTuple):
    name: str
    aspect: str | None  # the aspect the name spells where the pattern has {aspect}; None without one


def escape(value: str) -> str:
    """``value`` as literal pattern text: each ``* ? [ {`` stands in brackets (``[*]``), as fnmatch spells it."""
    return "".join(f"[{ch}]" if ch in _META else ch for ch in value)


@lru_cache(maxsize=256)
def _glob(text: str) -> re.Pattern[str]:
    """A pattern part without ``{aspect}`` as a case-blind regex: ``*``, ``?``, ``[c]`` (a literal c)."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "[" and i + 2 < len(text) and text[i + 2] == "]":
            out.append(re.escape(text[i + 1]))
            i += 3
            continue
        out.append("[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _match(parts: tuple[str, ...], stem: str) -> tuple[bool, str | None]:
    """Whether ``stem`` matches the parts with an aspect spelled where they meet (each ``{aspect}`` the same),
    and that aspect (None when the pattern has no ``{aspect}``).

    When a name spells several aspects (``Story_v1-1_9x16``), a known one is taken first, then one written
    with ``x`` or ``by`` (a ``-`` or ``_`` may be a date's or a version's), then the leftmost: the
    measurement, not the name, has the last word.
    """
    first, *rest = parts
    if not rest:
        return bool(_glob(first).fullmatch(stem)), None
    found = []
    for hit in _SPELLINGS.finditer(stem):
        aspect = spelled_aspect(hit[1])
        if aspect is None or not _glob(first).fullmatch(stem[:hit.start(1)]):
            continue
        matched, after = _match(tuple(rest), stem[hit.end(1):])
        if matched and after in (None, aspect):
            found.append((aspect not in KNOWN_ASPECTS, not _PLAIN.search(hit[1]), hit.start(1), aspect))
    return (True, min(found)[3]) if found else (False, None)


def match_names(pattern: str, kind: str, names: Iterable[str]) -> list[NameMatch]:
    """The names that ``pattern`` (the last segment, placeholders but ``{aspect}`` filled) matches, best first."""
    parts = tuple(pattern.split(ASPECT))
    order = EXTENSIONS[kind]
    hits = []
    for name in names:
        split = split_extension(name, kind)
        if split is None:
            continue
        matched, aspect = _match(parts, split[0])
        if matched:
            hits.append((order.index(split[1]), name, aspect))
    return [NameMatch(name, aspect) for _, name, aspect in sorted(hits, key=lambda hit: hit[:2])]
