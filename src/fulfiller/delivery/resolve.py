"""Finding the master for a request: route, aspect order, catalog look-up, real type.

Shared by the worker and by ``fulfiller resolve`` (the operator's dry run), so
the dry run says exactly what the worker would do.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fulfiller.catalogs.base import Catalog, Master, Opened
from fulfiller.catalogs.registry import build_catalog
from fulfiller.config import Config
from fulfiller.delivery.routing import aspect_order, no_match_reason, route_for
from fulfiller.delivery.sniff import HEAD_BYTES, classify, sniff
from fulfiller.events import Coordinates, SourceRequest


@dataclass(frozen=True)
class Found:
    """The master to deliver, with its real type, and its stream as the sniff left it."""

    master: Master
    aspect: str
    content_type: str
    extension: str
    opened: Opened
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
    """Walk the aspects in order and the candidates in each; the first whose bytes are the right kind wins.

    A candidate whose real type is not the request's kind (an image saved as
    .mp4) is passed over, and the reason kept, rather than delivered.
    CatalogUnavailable propagates: the caller retries. The caller owns the
    returned ``Found.opened`` and must close it if it does not upload.
    """
    name = route_for(config.routes, req.project_slug, req.coords.code)
    if name is None:
        return NotFound("no_route", [f"no route matches project={req.project_slug} code={req.coords.code}"])
    catalog = catalogs.get(name)
    notes: list[str] = []
    for aspect in aspect_order(req, config.aspects):
        for master in await catalog.find(req.layout_fields(aspect), req.kind):
            opened = await Opened.start(catalog, master, config.worker.chunk_bytes)
            mime = sniff(opened.head[:HEAD_BYTES])
            kind_ext = classify(mime)
            if kind_ext is None or kind_ext[0] != req.kind:
                await opened.aclose()
                notes.append(f"{master.catalog}:{master.object} is {mime}, not a {req.kind}: passed over")
                continue
            return Found(master, aspect, mime, kind_ext[1], opened, notes)
        notes.append(f"{aspect}: nothing in {name}")
    return NotFound(no_match_reason(req), notes)


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
