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
from pathlib import Path
from typing import BinaryIO

from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Listing, Master, Source, SourceStream
from fulfiller.config import LocalCatalogConfig

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

    async def list_in(self, folders: list[str]) -> Listing:
        folder = self.root.joinpath(*folders)
        files, subfolders = await asyncio.to_thread(self._scan, folder)
        return Listing(
            [
                Master(
                    catalog=self.name,
                    object=(folder / name).relative_to(self.root).as_posix(),
                    name=name,
                    size=files[name],
                    ref=str(folder / name),
                )
                for name in sorted(files)
            ],
            sorted(subfolders),
        )

    def _scan(self, folder: Path) -> tuple[dict[str, int], list[str]]:
        """Regular files directly in ``folder`` with their sizes, and its subfolders; nothing when it is missing."""
        # Symlinks inside the root are followed on purpose: operators link masters
        # in from other disks. Only the request-driven path is confined.
        if not self.root.is_dir():
            # An absent root is an unmounted share far more often than an empty
            # catalog; answering "not found" would send the platform a final skip.
            raise CatalogUnavailable(f"catalog {self.name}: root folder {self.root} is missing")
        files: dict[str, int] = {}
        subfolders: list[str] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    try:
                        if entry.is_file():
                            files[entry.name] = entry.stat().st_size
                        elif entry.is_dir():
                            subfolders.append(entry.name)
                    except OSError as exc:
                        if exc.errno in _NO_SUCH_PATH:
                            continue  # removed while we looked, a dangling link or a link loop: not a candidate
                        raise
        except OSError as exc:
            if exc.errno in _NO_SUCH_PATH:
                return {}, []
            if isinstance(exc, PermissionError):
                raise CatalogError(f"catalog {self.name}: cannot list {folder}: {exc.strerror}") from exc
            raise CatalogUnavailable(f"catalog {self.name}: cannot list {folder}: {exc.strerror}") from exc
        return files, subfolders

    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be >= 0, got {offset} and {length}")
        return await asyncio.to_thread(self._pread, master, offset, length)

    def _pread(self, master: Master, offset: int, length: int) -> bytes:
        """One ``pread``: no seek, no buffer beyond the bytes asked for."""
        try:
            fd = os.open(master.ref, os.O_RDONLY)
            try:
                return os.pread(fd, length, offset)
            finally:
                os.close(fd)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise CatalogError(f"catalog {self.name}: file vanished: {master.object}") from exc
        except PermissionError as exc:
            raise CatalogError(f"catalog {self.name}: cannot read {master.object}: {exc.strerror}") from exc
        except OSError as exc:  # EIO, a stale NFS handle: the disk or share may come back
            raise CatalogUnavailable(f"catalog {self.name}: read failed on {master.object}: {exc.strerror}") from exc

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

    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> SourceStream:
        return SourceStream(lambda: asyncio.to_thread(self._open, master, start), chunk_size)

    def _open(self, master: Master, start: int) -> _FileSource:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        try:
            f = open(master.ref, "rb")  # closed by the source
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise CatalogError(f"catalog {self.name}: file vanished: {master.object}") from exc
        except PermissionError as exc:
            raise CatalogError(f"catalog {self.name}: cannot read {master.object}: {exc.strerror}") from exc
        except OSError as exc:
            raise CatalogUnavailable(f"catalog {self.name}: cannot open {master.object}: {exc.strerror}") from exc
        f.seek(start)
        return _FileSource(f, f"catalog {self.name}: read failed on {master.object}")


class _FileSource(Source):
    """An open file, read straight into the reader's buffer (a buffered file's ``readinto`` of a large
    buffer reads from the kernel into it directly, and fills it unless the end comes first)."""

    def __init__(self, f: BinaryIO, failure: str):
        self._file = f
        self._failure = failure

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self._file.readinto(buffer)
        except OSError as exc:
            # EIO, a stale NFS handle: the disk or share may come back.
            raise CatalogUnavailable(f"{self._failure}: {exc.strerror}") from exc

    def close(self) -> None:
        self._file.close()
