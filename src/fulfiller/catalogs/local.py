"""Masters in a folder on this machine (or a mounted share).

Used by the demo and by operators who sync masters to disk. Layout fields come
from webhook payloads, so a creative code is untrusted input: the base class
hands over only single, safe segments (never ``..``), so a look-up stays under
the root.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Master
from fulfiller.config import LocalCatalogConfig
from fulfiller.media import rank

# Errors that say one path cannot name anything here (missing, a file where a folder should be, too long,
# a symbolic link loop, a name this file system cannot hold), not that the disk is unwell: nothing found.
_NO_SUCH_PATH = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EILSEQ})


class LocalCatalog(Catalog):
    """A directory tree laid out as the config's ``layout`` says."""

    def __init__(self, name: str, layout: str, root: Path):
        super().__init__(name, layout)
        # Resolved once so a later chdir cannot move the catalog.
        self.root = root.resolve()

    @classmethod
    def from_config(cls, name: str, cfg: LocalCatalogConfig) -> LocalCatalog:
        """The catalog ``cfg`` describes; a relative root is taken from the current directory."""
        return cls(name, cfg.layout, Path(cfg.root))

    async def find_in(self, folders: list[str], stem: str, kind: str) -> list[Master]:
        folder = self.root.joinpath(*folders)
        entries = await asyncio.to_thread(self._list_files, folder)
        return [
            Master(
                catalog=self.name,
                object=(folder / name).relative_to(self.root).as_posix(),
                name=name,
                size=entries[name],
                ref=str(folder / name),
            )
            for name in rank(list(entries), stem, kind)
        ]

    def _list_files(self, folder: Path) -> dict[str, int]:
        """Regular files directly in ``folder`` with their sizes; {} when the folder is missing."""
        # Symlinks inside the root are followed on purpose: operators link masters
        # in from other disks. Only the request-driven path is confined.
        if not self.root.is_dir():
            # An absent root is an unmounted share far more often than an empty
            # catalog; answering "not found" would send the platform a final skip.
            raise CatalogUnavailable(f"catalog {self.name}: root folder {self.root} is missing")
        files: dict[str, int] = {}
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    try:
                        if entry.is_file():
                            files[entry.name] = entry.stat().st_size
                    except OSError as exc:
                        if exc.errno in _NO_SUCH_PATH:
                            continue  # removed while we looked, a dangling link or a link loop: not a candidate
                        raise
        except OSError as exc:
            if exc.errno in _NO_SUCH_PATH:
                return {}
            if isinstance(exc, PermissionError):
                raise CatalogError(f"catalog {self.name}: cannot list {folder}: {exc.strerror}") from exc
            raise CatalogUnavailable(f"catalog {self.name}: cannot list {folder}: {exc.strerror}") from exc
        return files

    async def probe(self) -> str:
        """List the root folder: it must exist, be a folder, and be readable by this process."""
        return await asyncio.to_thread(self._probe)

    def _probe(self) -> str:
        try:
            with os.scandir(self.root) as it:
                count = sum(1 for _ in it)
        except OSError as exc:  # missing (an unmounted share), a file, or not ours to read
            raise CatalogError(f"catalog {self.name}: cannot list root folder {self.root}: {exc.strerror}") from None
        return f"local folder {self.root}: {count} items"

    async def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        f = await asyncio.to_thread(self._open, master, start)
        try:
            while chunk := await asyncio.to_thread(self._read, master, f, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(f.close)

    def _open(self, master: Master, start: int) -> BinaryIO:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        try:
            f = open(master.ref, "rb")  # closed by the caller
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise CatalogError(f"catalog {self.name}: file vanished: {master.object}") from exc
        except PermissionError as exc:
            raise CatalogError(f"catalog {self.name}: cannot read {master.object}: {exc.strerror}") from exc
        except OSError as exc:
            raise CatalogUnavailable(f"catalog {self.name}: cannot open {master.object}: {exc.strerror}") from exc
        f.seek(start)
        return f

    def _read(self, master: Master, f: BinaryIO, size: int) -> bytes:
        try:
            return f.read(size)
        except OSError as exc:
            # EIO, a stale NFS handle: the disk or share may come back.
            raise CatalogUnavailable(f"catalog {self.name}: read failed on {master.object}: {exc.strerror}") from exc

