"""What every catalog of masters offers the engine.

A catalog answers two questions: which files could be the master for these
coordinates (``find``, size known before any download), and what are its bytes
(``stream``, resumable from an offset). A failure is reported as CatalogError
(retrying will not help) or CatalogUnavailable (it may): the catalog does not
back off and try again itself; the engine decides whether and when to, within
the job's deadline.
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any


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


# The longest name a file system (ext4, APFS, NTFS) or a synced Drive folder holds, in UTF-8 bytes.
MAX_SEGMENT_BYTES = 255
# A character that would split a segment in some catalog ("/" everywhere, "\\" on Windows shares) or that no
# file system, S3 key or Drive name should be asked for (NUL, C0 and C1 controls, DEL).
_UNSAFE_CHARS = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")


def _fits_one_segment(text: str) -> bool:
    """True when ``text`` can stand in a single path segment of every catalog type (it may be empty)."""
    if text in (".", "..") or _UNSAFE_CHARS.search(text):
        return False
    try:
        return len(text.encode()) <= MAX_SEGMENT_BYTES
    except UnicodeEncodeError:  # a lone surrogate: nothing can be named by it
        return False


def render_layout(layout: str, fields: Mapping[str, Any]) -> tuple[list[str], str] | None:
    """Fill the layout template: the folder segments and the file stem (last segment).

    Only the layout's own ``/`` separates segments: a placeholder value is one
    segment at most. None when a value is not a safe part of one segment (it
    holds a separator or a control character, is ``.`` or ``..``, or is too
    long), or when a segment holding a placeholder comes out empty, ``.``,
    ``..`` or too long: such a request matches nothing in any catalog, and
    asking the backend would only cost a call or walk out of the root. Empty
    segments of the layout's own text (``a//b``) are dropped.
    """
    formatter = string.Formatter()
    segments = [""]
    filled: set[int] = set()  # indexes of the segments a placeholder wrote into
    for literal, name, spec, conversion in formatter.parse(layout):
        first, *more = literal.split("/")
        segments[-1] += first
        segments.extend(more)
        if name is None:
            continue
        value = formatter.convert_field(formatter.get_field(name, (), fields)[0], conversion)
        text = formatter.format_field(value, spec or "")
        if not _fits_one_segment(text):
            return None
        segments[-1] += text
        filled.add(len(segments) - 1)
    kept = [seg for i, seg in enumerate(segments) if seg or i in filled]
    if not kept or not all(seg and _fits_one_segment(seg) for seg in kept):
        return None
    *folders, stem = kept
    return folders, stem


class Catalog(ABC):
    """A place masters live. Implementations must be safe to call concurrently."""

    def __init__(self, name: str, layout: str):
        self.name = name
        self.layout = layout

    async def find(self, fields: Mapping[str, Any], kind: str) -> list[Master]:
        """Candidates for the layout filled with ``fields``, best first (``fulfiller.media.rank``).

        An empty list means "not in this catalog"; it comes without asking the
        backend when the filled layout is no safe path (see ``render_layout``).
        CatalogUnavailable means the catalog cannot be asked right now.
        """
        rendered = render_layout(self.layout, fields)
        if rendered is None:
            return []
        folders, stem = rendered
        return await self.find_in(folders, stem, kind)

    @abstractmethod
    async def find_in(self, folders: list[str], stem: str, kind: str) -> list[Master]:
        """Candidates named ``stem`` (any extension allowed for ``kind``) in the folder ``folders``, best first.

        Every segment is a single, safe path segment (``render_layout`` checked it).
        """

    @abstractmethod
    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """The master's bytes from offset ``start`` to the end, in chunks of about ``chunk_size``."""

    async def probe(self) -> str:
        """Reach the catalog once to prove configuration and credentials; a short description."""
        return "configured"

    async def aclose(self) -> None:
        """Release connections; the default has none."""


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
