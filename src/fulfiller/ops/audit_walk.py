"""The audit's walk: every master a catalog's layout could ever deliver, found and measured.

A delivery fills the layout with one request's values and looks in one
folder; the audit has no request, so it runs the layout the other way round.
Each folder segment (``{code}``, ``v{variation}``, ``{locale}``) becomes a
regex that captures its placeholders from the subfolder names at that depth
(``{project}``, ``{project_id}`` and ``{kind}`` segments take every
subfolder), and in each leaf folder the last segment, filled with what the
path captured, is matched exactly as a delivery matches it
(``layout.render_layout`` and ``naming.match_names``), for both kinds. A
placeholder that only the file name holds (``{code}_{aspect}`` in one flat
folder) is read from the name first.

Each master is then sniffed and measured from range reads (the head, and an
MP4/MOV's ``moov`` when it lies past it): never a download, and never more
than :data:`fulfiller.measure.HEAD_BYTES` held per master. At most a few
listings and measurements run at once, so a catalog of thousands of files does
not trip Drive's rate limits, and a catalog that answers "try later"
(CatalogUnavailable) is waited for with the worker's backoff
(``retry.next_try``) a few times before the file or folder is given up on.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import NamedTuple, TypeVar

from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Master
from fulfiller.catalogs.layout import render_layout
from fulfiller.config import LAYOUT_FIELDS, WorkerConfig
from fulfiller.delivery.sniff import HEAD_BYTES as SNIFF_BYTES
from fulfiller.delivery.sniff import classify, sniff
from fulfiller.measure import Measured, Unmeasurable, measure
from fulfiller.measure.aspect import SPELLING
from fulfiller.media import KINDS, split_extension
from fulfiller.naming import ASPECT, match_names
from fulfiller.retry import Transient, next_try

T = TypeVar("T")

# What a placeholder can capture from a name; anything else takes one or more characters of a segment.
_VALUES = {"variation": "[0-9]+", "kind": "|".join(KINDS), "aspect": "[0-9]+x[0-9]+"}
_FORMATTER = string.Formatter()


class CreativeKey(NamedTuple):
    """A creative as the layout names it; None for a placeholder the layout does not use."""

    project: str | None
    project_id: str | None
    code: str | None
    variation: str | None
    locale: str | None

    @classmethod
    def of(cls, values: Mapping[str, str]) -> CreativeKey:
        return cls(*(values.get(name) for name in cls._fields))


@dataclass(frozen=True)
class Checked:
    """One master, as the audit found it: its creative, its kind (by extension), the aspect its name (or
    folder) spells, and what its head said; ``error`` when it cannot be delivered as what it claims."""

    creative: CreativeKey
    kind: str
    master: Master
    named: str | None
    mime: str | None = None
    measured: Measured | None = None
    error: str | None = None


class GaveUp(Exception):
    """The catalog stayed unavailable through every try."""


class Calls:
    """The audit's manners towards a catalog: ``slot`` bounds how much runs at once, ``retrying`` waits out
    CatalogUnavailable with the worker's backoff, ``tries`` times at most."""

    def __init__(self, worker: WorkerConfig, concurrency: int, tries: int,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.slot = asyncio.Semaphore(concurrency)
        self._base_s, self._cap_s, self._tries, self._sleep = worker.retry_base_s, worker.retry_max_s, tries, sleep

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        failed = 0
        while True:
            try:
                return await call()
            except CatalogUnavailable as exc:
                failed += 1
                # No job deadline here: only the number of tries ends the wait.
                wait = next_try(failed, Transient(str(exc), retry_after=exc.retry_after), deadline=math.inf,
                                base_s=self._base_s, cap_s=self._cap_s)
                if failed >= self._tries or wait is None:
                    raise GaveUp(f"catalog unavailable after {failed} tries: {exc}") from None
                await self._sleep(wait)


def _literal(text: str, glob: bool) -> str:
    """A segment's own text as regex: literal, or (the last segment) with ``*`` and ``?`` as globs."""
    if not glob:
        return re.escape(text)
    return "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text)


def _segment_regex(segment: str, known: Mapping[str, str], *, last: bool) -> re.Pattern[str]:
    """``segment`` as a regex capturing the placeholders ``known`` does not hold yet.

    A folder name is compared as the backend stores it (a delivery asks for it
    literally); the last segment as ``naming`` compares names, case blind,
    with ``*`` and ``?`` as globs and ``{aspect}`` in any spelling.
    """
    out: list[str] = []
    seen: set[str] = set()
    for literal, name, _spec, _conversion in _FORMATTER.parse(segment):
        out.append(_literal(literal, last))
        if name is None:
            continue
        if last and name == "aspect":
            out.append(f"(?:{SPELLING})")
        elif name in known:
            out.append(re.escape(known[name]))
        elif name in seen:
            out.append(f"(?P={name})")
        else:
            seen.add(name)
            out.append(f"(?P<{name}>{_VALUES.get(name, '.+?')})")
    return re.compile("".join(out), (re.IGNORECASE | re.DOTALL) if last else re.DOTALL)


def _uncaptured(segment: str, known: Mapping[str, str]) -> bool:
    """Whether ``segment`` holds a placeholder (``{aspect}`` aside) that only a file name can give a value."""
    return any(name not in (None, "aspect") and name not in known for _, name, _, _ in _FORMATTER.parse(segment))


def _fields(values: Mapping[str, str]) -> dict[str, object]:
    """Captured values as a request would fill the layout: every placeholder set, a variation a number."""
    fields: dict[str, object] = {name: "" for name in LAYOUT_FIELDS}
    fields["aspect"] = "1x1"  # kept as {aspect} in the last segment; a folder's {aspect} was captured
    fields.update(values)
    variation = values.get("variation")
    if variation is not None and variation.isdigit():
        fields["variation"] = int(variation)
    return fields


class Walk:
    """One catalog walked: ``checked`` holds every master found, ``errors`` the folders that could not be
    listed; ``folders``, ``files`` and ``measured`` count progress for ``on_progress``."""

    def __init__(self, catalog: Catalog, calls: Calls, code_glob: str | None,
                 on_progress: Callable[[Walk], None] = lambda walk: None):
        self.catalog, self._calls, self._code_glob, self._on_progress = catalog, calls, code_glob, on_progress
        self.segments = [segment for segment in catalog.layout.split("/") if segment]
        self.checked: list[Checked] = []
        self.errors: list[tuple[str, str]] = []
        self.folders = self.files = self.measured = 0

    async def run(self) -> None:
        await self._folder([], {})

    def _wanted(self, values: Mapping[str, str]) -> bool:
        code = values.get("code")
        return self._code_glob is None or code is None or fnmatchcase(code, self._code_glob)

    async def _folder(self, path: list[str], known: dict[str, str]) -> None:
        try:
            async with self._calls.slot:
                listing = await self._calls.retrying(lambda: self.catalog.list_folder(path))
        except (CatalogError, GaveUp) as exc:
            self.errors.append(("/".join(path) or "(root)", str(exc)))
            return
        self.folders += 1
        self._on_progress(self)
        depth = len(path)
        if depth == len(self.segments) - 1:
            await self._leaf(listing.files, known)
            return
        regex = _segment_regex(self.segments[depth], known, last=False)
        below = []
        for name in listing.folders:
            match = regex.fullmatch(name)
            if match is None:
                continue
            values = known | match.groupdict()
            if self._wanted(values):
                below.append(self._folder([*path, name], values))
        async with asyncio.TaskGroup() as group:
            for walk in below:
                group.create_task(walk)

    def _name_match(self, name: str, kind: str, known: dict[str, str]) -> tuple[dict[str, str], str | None] | None:
        """The creative's values and the aspect the name spells, when the last segment matches ``name``."""
        split = split_extension(name, kind)
        if split is None:
            return None
        values = known
        last = self.segments[-1]
        if _uncaptured(last, known):
            match = _segment_regex(last, known, last=True).fullmatch(split[0])
            if match is None:
                return None
            values = known | match.groupdict()
        if values.get("kind", kind) != kind or not self._wanted(values):
            return None
        rendered = render_layout(self.catalog.layout, _fields(values))
        hits = match_names(rendered[1], kind, [name]) if rendered else []
        if not hits:
            return None
        return values, hits[0].aspect if ASPECT in rendered[1] else values.get("aspect")

    async def _leaf(self, files: list[Master], known: dict[str, str]) -> None:
        found = []
        for kind in KINDS:
            for master in files:
                if hit := self._name_match(master.name, kind, known):
                    found.append((CreativeKey.of(hit[0]), kind, master, hit[1]))
        self.files += len(found)
        self._on_progress(self)
        async with asyncio.TaskGroup() as group:
            for creative, kind, master, named in found:
                group.create_task(self._check(creative, kind, master, named))

    async def _check(self, creative: CreativeKey, kind: str, master: Master, named: str | None) -> None:
        heads: list[bytes] = []

        async def read(offset: int, length: int) -> bytes:
            data = await self._calls.retrying(lambda: self.catalog.read_range(master, offset, length))
            if offset == 0:
                heads.append(data)  # what measuring read first is what the sniff looks at: no second read
            return data

        try:
            async with self._calls.slot:
                measured: Measured | None = await measure(read, master.size)
            error = None
        except Unmeasurable as exc:
            measured, error = None, f"cannot be measured: {exc.reason}"
        except (CatalogError, GaveUp) as exc:
            measured, error = None, f"catalog error: {exc}" if isinstance(exc, CatalogError) else str(exc)
        mime = sniff(heads[0][:SNIFF_BYTES]) if heads and heads[0] else None
        if mime is not None:
            real = classify(mime)
            if real is None or real[0] != kind:
                measured, error = None, f"is {mime}, not a {kind}"
        self.checked.append(Checked(creative, kind, master, named, mime, measured, error))
        self.measured += 1
        self._on_progress(self)
