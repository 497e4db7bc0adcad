"""Finding the master for a request: route, aspect order, catalog look-up, real type, measured picture.

Shared by the worker and by ``fulfiller resolve`` (the operator's dry run), so
the dry run says exactly what the worker would do.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fulfiller.catalogs.base import Catalog, CatalogError, Listings, Master, Opened
from fulfiller.catalogs.registry import build_catalog
from fulfiller.config import Config
from fulfiller.delivery.routing import aspect_order, no_match_reason, route_for
from fulfiller.delivery.sniff import HEAD_BYTES, classify, sniff
from fulfiller.events import Coordinates, SourceRequest
from fulfiller.measure import Measured, RangeReader, Unmeasurable, measure, same_aspect


@dataclass(frozen=True)
class Found:
    """The master to deliver, with its real type, its measured picture (None when its format could not be
    measured), and its stream as the sniff left it."""

    master: Master
    aspect: str
    content_type: str
    extension: str
    opened: Opened
    measured: Measured | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NotFound:
    """Nothing to deliver: the skip reason to send, and what was looked at."""

    reason: str
    notes: list[str] = field(default_factory=list)


class Catalogs:
    """The configured catalogs, built on first use and kept for the process's life."""

    def __init__(self, config: Config):
        self._config = config
        self._built: dict[str, Catalog] = {}

    def get(self, name: str) -> Catalog:
        if name not in self._built:
            self._built[name] = build_catalog(name, self._config.catalogs[name])
        return self._built[name]

    async def aclose(self) -> None:
        for catalog in self._built.values():
            await catalog.aclose()
        self._built.clear()


async def find_master(req: SourceRequest, config: Config, catalogs: Catalogs) -> Found | NotFound:
    """Walk the aspects in order and the candidates in each; the first that is the right kind and, with
    ``worker.check_aspect``, whose picture is the aspect it would be delivered as, wins.

    A candidate that is not (an image saved as .mp4, a square picture named 9x16), or that the catalog will
    not give (CatalogError), is passed over, and the reason kept, rather than delivered; when no other
    candidate fits, the first CatalogError is raised (the job fails; it is no skip). CatalogUnavailable
    propagates: the caller retries. The caller owns the returned ``Found.opened`` and must close it if it
    does not upload.
    """
    name = route_for(config.routes, req.project_slug, req.coords.code)
    if name is None:
        return NotFound("no_route", [f"no route matches project={req.project_slug} code={req.coords.code}"])
    look = _Look(catalogs.get(name), req.kind, config)
    for aspect in aspect_order(req, config.aspects):
        for master in await look.catalog.find(req.layout_fields(aspect), req.kind, look.listings):
            found = await look.candidate(master, aspect)
            if found is not None:
                return found
        look.notes.append(f"{aspect}: nothing in {name}")
    if look.unreadable:
        # Not a skip: the master may be there (Drive's per-file download quota, say); the job fails with
        # the reason and an operator can rerun it.
        raise look.unreadable[0]
    return NotFound(no_match_reason(req, look.mismatched), look.notes)


@dataclass
class _Verdict:
    """What a candidate's head said: its type and picture (kept for the resolve's other aspects)."""

    mime: str
    kind_ext: tuple[str, str] | None
    measured: Measured | None


class _Look:
    """One resolve: the folders it listed, what it learnt of each candidate, what it refused and why."""

    def __init__(self, catalog: Catalog, kind: str, config: Config) -> None:
        self.catalog, self.kind = catalog, kind
        self.chunk_bytes, self.check_aspect = config.worker.chunk_bytes, config.worker.check_aspect
        self.listings = Listings()
        self.notes: list[str] = []
        self.mismatched: dict[str, str] = {}  # object -> measured aspect, for the skip reason
        self.unreadable: list[CatalogError] = []  # candidates the catalog would not give (another may)
        self._verdicts: dict[tuple[str, str], _Verdict] = {}

    async def candidate(self, master: Master, aspect: str) -> Found | None:
        """The Found for ``master`` delivered as ``aspect``, or None (passed over, with a note)."""
        try:
            return await self._candidate(master, aspect)
        except CatalogError as exc:
            self.unreadable.append(exc)
            self.notes.append(f"{master.catalog}:{master.object} cannot be read ({exc}): passed over")
            return None

    async def _candidate(self, master: Master, aspect: str) -> Found | None:
        key = (master.catalog, master.ref)
        verdict = self._verdicts.get(key)
        opened = None
        if verdict is None:
            opened = await Opened.start(self.catalog, master, self.chunk_bytes)
            try:
                verdict = self._verdicts[key] = await self._judge(master, opened)
            except BaseException:
                await opened.aclose()
                raise
        if verdict.kind_ext is None or verdict.kind_ext[0] != self.kind:
            refusal = f"{master.catalog}:{master.object} is {verdict.mime}, not a {self.kind}: passed over"
        elif self.check_aspect and verdict.measured and not same_aspect(verdict.measured.aspect, aspect):
            self.mismatched[master.object] = verdict.measured.aspect
            refusal = (f"{master.catalog}:{master.object} measures {verdict.measured.aspect}, not {aspect}: "
                       "passed over")
        else:
            # A candidate judged for an earlier aspect was closed then: it is opened again (its head only).
            opened = opened or await Opened.start(self.catalog, master, self.chunk_bytes)
            return Found(master, aspect, verdict.mime, verdict.kind_ext[1], opened, verdict.measured, self.notes)
        if opened is not None:
            await opened.aclose()
        if refusal not in self.notes:
            self.notes.append(refusal)
        return None

    async def _judge(self, master: Master, opened: Opened) -> _Verdict:
        mime = sniff(opened.head[:HEAD_BYTES])
        kind_ext = classify(mime)
        if kind_ext is None:
            return _Verdict(mime, None, None)
        try:
            measured = await measure(_reader(self.catalog, master, opened.head), master.size)
        except Unmeasurable as exc:
            self.notes.append(f"{master.catalog}:{master.object} could not be measured ({exc.reason}): "
                              "delivered as its name says")
            return _Verdict(mime, kind_ext, None)
        self.notes.append(f"{master.catalog}:{master.object} measured {describe(measured)}")
        return _Verdict(mime, kind_ext, measured)


def describe(measured: Measured) -> str:
    """A measured picture in words, as notes and ``fulfiller resolve`` show it."""
    shown = measured.to_json()
    return f"{shown['width']}x{shown['height']}, rotation {shown['rotation']}, aspect {shown['aspect']}"


def _reader(catalog: Catalog, master: Master, head: bytes) -> RangeReader:
    """Range reads of ``master``: from the head the stream already holds, the rest from the catalog."""

    async def read(offset: int, length: int) -> bytes:
        have = head[offset:offset + length]
        end = min(offset + length, master.size)
        if offset + len(have) >= end:
            return have
        return have + await catalog.read_range(master, offset + len(have), end - offset - len(have))

    return read


async def dry_run(config: Config, args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """``fulfiller resolve``: print what would be delivered (exit 0) or the skip it would send (exit 3)."""
    accepted: tuple[str, ...] = ()
    if args.family:
        accepted = tuple(config.aspects.get(args.family, ()))
        if not accepted:
            out(f"unknown family {args.family!r}; configured: {sorted(config.aspects)}")
            return 2
    req = SourceRequest(
        coords=Coordinates(args.project_id, args.code, args.variation, args.locale),
        project_slug=args.project, kind=args.kind, aspect=args.aspect, family=args.family,
        accepted_aspects=accepted, upload_url="https://dry-run.invalid/", storage_key="(dry run)",
        expires_at=datetime.now(UTC) + timedelta(hours=1), callback_url="https://dry-run.invalid/",
    )
    catalogs = Catalogs(config)
    try:
        result = await find_master(req, config, catalogs)
        if isinstance(result, Found):
            await result.opened.aclose()
    finally:
        await catalogs.aclose()
    for note in result.notes:
        out(f"  note: {note}")
    if isinstance(result, NotFound):
        out(f"would skip: {result.reason}")
        return 3
    m = result.master
    out(f"catalog:  {m.catalog}")
    out(f"object:   {m.object}")
    out(f"size:     {m.size} bytes")
    out(f"type:     {result.content_type} (extension {result.extension})")
    out(f"aspect:   {result.aspect}")
    out(f"measured: {describe(result.measured) if result.measured else 'not measurable'}")
    return 0


async def probe_catalogs(config: Config, out: Callable[[str], None]) -> int:
    """``check-config --probe``: list every catalog's root once; the number that could not."""
    catalogs = Catalogs(config)
    failures = 0
    try:
        for name in config.catalogs:
            try:
                out(f"  {name}: ok: {await catalogs.get(name).probe()}")
            except Exception as exc:  # any failure is the operator's answer here
                failures += 1
                out(f"  {name}: FAILED: {exc}")
    finally:
        await catalogs.aclose()
    return failures
