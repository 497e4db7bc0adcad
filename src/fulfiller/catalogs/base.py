"""What every catalog of masters offers the engine.

A catalog answers two questions: which files could be the master for these
coordinates (``find``, size known before any download), and what are its bytes
(``stream``, resumable from an offset; ``read_range`` for the few ranges a
measurement reads). ``find`` lists the layout's folder (``list_folder``, which
an audit also walks) and matches names there, once per resolve when given a
``Listings``: a resolve trying several aspects in one folder lists it once. The built-in catalogs stream through a
``Source``, which the upload reads from a thread of its own, straight into its
own buffers, with no trip through the event loop per chunk. A failure is reported as CatalogError
(retrying will not help) or CatalogUnavailable (it may): the catalog does not
back off and try again itself; the engine decides whether and when to, within
the job's deadline.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fulfiller.catalogs.layout import fits_one_segment, matching, render_layout


class CatalogError(Exception):
    """A permanent failure for this job (e.g. Drive's downloadQuotaExceeded): retrying will not help."""


class CatalogUnavailable(Exception):
    """A transient failure (outage, throttling, cut connection): retry within the deadline.

    ``retry_after`` is the pause in seconds the backend asked for (an HTTP
    Retry-After), when it named one: the retry waits at least that long.
    """

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Master:
    """One candidate file in a catalog."""

    catalog: str  # the catalog's name in the config
    object: str  # human-readable location: a path, key or Drive path
    name: str  # the file name, extension included
    size: int
    ref: str = ""  # backend handle: file path, S3 key, Drive file id
    md5: str | None = None  # lowercase hex, when the store publishes a trustworthy one
    sha256: str | None = None  # lowercase hex, likewise; the upload checks it on the hash it computes anyway
    # The catalog's version tag of the object (S3's ETag), when it has one: its streams ask for this version
    # only, so an object replaced after it was found is refused mid-job rather than spliced into an upload.
    version: str | None = None
    # The aspect the file's name spells where the layout's last segment has {aspect} (``9x16`` for
    # ``..._1080x1920.mp4``); None when it has none: only a measurement can tell then.
    named_aspect: str | None = None


@dataclass(frozen=True)
class Listing:
    """One folder of a catalog: the files directly in it (sizes and the usual Master fields) and its
    subfolders' names, each sorted by name; empty when there is no such folder."""

    files: list[Master] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)


class Listings:
    """The folders listed during one resolve (or one walk of an audit), by catalog and path.

    A resolve tries several aspects, often in one folder: each folder is asked
    of the backend (an S3 prefix, Drive children, a local directory) once,
    however many aspects or patterns it is matched against. A failed listing is
    not kept: the next ask lists again.
    """

    def __init__(self) -> None:
        self._listed: dict[tuple[str, tuple[str, ...]], Listing] = {}

    async def get(self, catalog: Catalog, folders: Sequence[str]) -> Listing:
        """``catalog.list_folder(folders)``, asked of the backend the first time only."""
        key = (catalog.name, tuple(folders))
        listing = self._listed.get(key)
        if listing is None:
            listing = self._listed[key] = await catalog.list_folder(folders)
        return listing


class Catalog(ABC):
    """A place masters live. Implementations must be safe to call concurrently."""

    def __init__(self, name: str, layout: str):
        self.name = name
        self.layout = layout

    async def find(self, fields: Mapping[str, Any], kind: str, listings: Listings | None = None) -> list[Master]:
        """Candidates for the layout filled with ``fields``, for the aspect in ``fields["aspect"]``, best first.

        The folder is listed (through ``listings``, once per resolve, when
        given) and its names matched against the last segment as a pattern
        (``layout.render_layout``, ``layout.matching``): with ``{aspect}`` in
        it, the names spelling that aspect; without, every name it matches,
        each ``named_aspect`` None. An empty list means "not in this catalog";
        it comes without asking the backend when the filled layout is no safe
        path. CatalogUnavailable means the catalog cannot be asked right now.
        """
        rendered = render_layout(self.layout, fields)
        if rendered is None:
            return []
        folders, pattern = rendered
        listing = await (listings or Listings()).get(self, folders)
        return matching(listing.files, pattern, kind, fields.get("aspect"))

    async def list_folder(self, folders: Sequence[str]) -> Listing:
        """The folder at the path ``folders`` under the catalog's root (``[]``: the root itself).

        Empty when there is no such folder, or when a segment is not one safe
        path segment (an audit walks names the backend gave: an S3 prefix may
        be ``..``), which is never asked of the backend.
        """
        if not all(seg and fits_one_segment(seg) for seg in folders):
            return Listing()
        return await self.list_in(list(folders))

    @abstractmethod
    async def list_in(self, folders: list[str]) -> Listing:
        """``list_folder`` for a path whose every segment is a single, safe path segment (checked)."""

    @abstractmethod
    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        """``length`` bytes of ``master`` from ``offset`` (fewer only at its end), as one ranged read.

        For measuring a master before it is streamed: a few small ranges, never
        the whole file. Failures as ``stream``'s (CatalogError, CatalogUnavailable).
        """

    @abstractmethod
    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """The master's bytes from offset ``start`` to the end, in chunks of about ``chunk_size``."""

    async def probe(self) -> str:
        """Reach the catalog once to prove configuration and credentials; a short description."""
        return "configured"

    async def aclose(self) -> None:
        """Release connections; the default has none."""


class Source(ABC):
    """A master's bytes from an offset, opened: blocking reads, from one thread at a time."""

    @abstractmethod
    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next bytes (wholly, unless the end comes first); how many.

        0 once the end is reached and the bytes are checked against what the
        catalog lists: a mismatch raises CatalogError, so a stream that does not
        raise delivered exactly the master.
        """

    def close(self) -> None:
        """Release the file or connection."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` new bytes; b"" at the (checked) end."""
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            got = self.readinto(view)
        del buffer[got:]
        return bytes(buffer)


class _Exhausted(Source):
    """What is left of a source read to its checked end: nothing."""

    def readinto(self, buffer: memoryview) -> int:
        return 0


class SourceStream(AsyncGenerator[bytes, None]):
    """A ``Source`` as the async stream ``Catalog.stream`` returns, opened at the first read.

    Iterated, it yields chunks of ``chunk_size`` (each read in a worker thread);
    the upload instead takes the source itself (``hand_over``) and reads it from
    a thread of its own into buffers it reuses.
    """

    def __init__(self, open_source: Callable[[], Awaitable[Source]], chunk_size: int):
        self.chunk_size = chunk_size
        self._open = open_source
        self._source: Source | None = None
        self._pushed = b""  # a chunk given back (``push_back``), yielded first
        self._over = False  # closed, or handed over
        self._ended = False  # read to its checked end

    async def _opened(self) -> Source:
        if self._source is None:
            self._source = await self._open()
        return self._source

    def push_back(self, chunk: bytes) -> None:
        """Yield ``chunk`` (already read) before the rest."""
        self._pushed = chunk

    async def hand_over(self) -> tuple[bytes, Source]:
        """The chunk pushed back (b"" if none) and the opened source, the caller's from now on to read and close."""
        if self._over and not self._ended:
            raise RuntimeError("the stream is closed")
        source = _Exhausted() if self._ended else await self._opened()
        head, self._pushed = self._pushed, b""
        self._source, self._over = None, True
        return head, source

    async def asend(self, value: None) -> bytes:
        if self._pushed:
            chunk, self._pushed = self._pushed, b""
            return chunk
        if self._over:
            raise StopAsyncIteration
        try:
            source = await self._opened()
            chunk = await asyncio.to_thread(source.read, self.chunk_size)
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            self._ended = True
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> NoReturn:
        await self.aclose()
        raise typ if val is None else val

    async def aclose(self) -> None:
        self._over, self._pushed = True, b""
        if self._source is not None:
            source, self._source = self._source, None
            await asyncio.to_thread(source.close)


class Opened:
    """A master's stream, started: its first chunk read, the rest still to come.

    The engine sniffs the first chunk to learn the master's real type, and the
    upload goes on with the same stream: a master is fetched once, not once for
    a look at its head and again in whole (a round trip saved on every job, and
    on Drive a request less against the quota).
    """

    def __init__(self, head: bytes, rest: AsyncGenerator[bytes, None]):
        self.head = head
        self._rest = rest
        self._taken = False

    @classmethod
    async def start(cls, catalog: Catalog, master: Master, chunk_size: int) -> Opened:
        """Open ``master`` and read its first chunk (shorter only when the whole file is)."""
        rest = catalog.stream(master, 0, chunk_size)
        try:
            head = await anext(rest, b"")
        except BaseException:
            await rest.aclose()
            raise
        return cls(head, rest)

    def take(self) -> AsyncGenerator[bytes, None] | None:
        """The whole stream, first chunk included; None once taken (a retry opens its own)."""
        if self._taken:
            return None
        self._taken = True
        if isinstance(self._rest, SourceStream):  # stays one: the upload's fast path reads its source itself
            self._rest.push_back(self.head)
            return self._rest
        return self._whole()

    async def _whole(self) -> AsyncGenerator[bytes, None]:
        try:
            if self.head:
                yield self.head
            async for chunk in self._rest:
                yield chunk
        finally:
            await self._rest.aclose()

    async def aclose(self) -> None:
        """Release the stream if nobody took it."""
        if not self._taken:
            self._taken = True
            await self._rest.aclose()
