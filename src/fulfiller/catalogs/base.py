"""What every catalog of masters offers the engine.

A catalog answers three questions: which files could be the master for these
coordinates (``find``, size known before any download), what are its bytes
(``stream``, resumable from an offset), and what are a few of its bytes
(``read_range``, for header checks without downloading it all).
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any


class CatalogError(Exception):
    """A permanent failure for this job (e.g. Drive's downloadQuotaExceeded): retrying will not help."""


class CatalogUnavailable(Exception):
    """A transient failure (outage, throttling, cut connection): retry within the deadline."""


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
    metadata: Mapping[str, Any] = field(default_factory=dict)


def render_layout(layout: str, fields: Mapping[str, Any]) -> tuple[list[str], str]:
    """Fill the layout template: the folder segments and the file stem (last segment)."""
    path = string.Formatter().vformat(layout, (), dict(fields))
    *folders, stem = [seg for seg in path.split("/") if seg]
    return folders, stem


class Catalog(ABC):
    """A place masters live. Implementations must be safe to call concurrently."""

    def __init__(self, name: str, layout: str):
        self.name = name
        self.layout = layout

    @abstractmethod
    async def find(self, fields: Mapping[str, Any], kind: str) -> list[Master]:
        """Candidates for the layout filled with ``fields``, best first (``fulfiller.media.rank``).

        An empty list means "not in this catalog"; raise CatalogUnavailable when
        the catalog cannot be asked right now.
        """

    @abstractmethod
    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """The master's bytes from offset ``start`` to the end, in chunks of about ``chunk_size``."""

    @abstractmethod
    async def read_range(self, master: Master, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from offset ``start`` (fewer at the end of the file)."""

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
