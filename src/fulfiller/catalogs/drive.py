"""Google Drive as a catalog of masters: the layout's folders walked from a root, files listed, media streamed.

The Drive API itself (credentials, authorised requests, Drive's errors) is in
``drive_api``; the folder walk and its cache in ``drive_folders``. A master of
any size is streamed in whole chunks and never sits in memory, and a
connection cut mid-file resumes with a Range request instead of starting over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import urllib3
from google.auth.credentials import Credentials

from fulfiller.bulkhttp import release
from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Listing, Master, Source, SourceStream
from fulfiller.catalogs.drive_api import (
    GOOGLE_NATIVE,
    SHORTCUT,
    DriveApi,
    NotFound,
    QuotaExceeded,
    is_folder,
    load_credentials,
    quote,
)
from fulfiller.catalogs.drive_copies import QuotaCopies
from fulfiller.catalogs.drive_folders import DriveFolders
from fulfiller.config import DriveCatalogConfig
from fulfiller.media import KINDS, split_extension

log = logging.getLogger(__name__)

# What finding a master reads of each file: a shortcut's target, the sort of same-named files, the checksums.
FILE_FIELDS = "id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,trashed,shortcutDetails"


class DriveCatalog(Catalog):
    """Masters in a Drive folder (or Shared Drive) tree, found by the layout template.

    Each request to Drive is tried once; a failure is reported as
    CatalogUnavailable (worth retrying, with Drive's Retry-After) or
    CatalogError, and the engine decides. ``max_resumes`` bounds how often one
    stream picks up after a cut connection.
    """

    def __init__(
        self,
        name: str,
        root_folder_id: str,
        credentials: Credentials,
        *,
        layout: str,
        api_endpoint: str | None = None,
        folder_cache_s: float = 60.0,
        max_resumes: int = 5,
        timeout_s: float = 60.0,
        quota_copy_folder_id: str | None = None,
    ):
        super().__init__(name, layout)
        self._api = DriveApi(credentials, api_endpoint=api_endpoint, timeout_s=timeout_s)
        self._folders = DriveFolders(self._api, root_folder_id, folder_cache_s)
        self._max_resumes = max_resumes
        self._copies = QuotaCopies(self._api, name, quota_copy_folder_id)

    @classmethod
    def from_config(cls, name: str, cfg: DriveCatalogConfig) -> DriveCatalog:
        """The catalog ``cfg`` describes; its credentials are loaded now (CatalogError when unusable)."""
        return cls(
            name,
            cfg.root_folder_id,
            load_credentials(cfg.credentials_file, write=cfg.quota_copy_folder_id is not None),
            layout=cfg.layout,
            api_endpoint=cfg.api_endpoint,
            folder_cache_s=cfg.folder_cache_s,
            quota_copy_folder_id=cfg.quota_copy_folder_id,
        )

    # -- finding -------------------------------------------------------------------------

    async def list_in(self, folders: list[str]) -> Listing:
        path = tuple(folders)
        was_cached = self._folders.cached(path) is not None
        listing = await self._list(path)
        if was_cached and not (listing.files or listing.folders):
            # A cached folder id may be stale (folder deleted and recreated): look once more, afresh.
            self._folders.forget(path)
            listing = await self._list(path)
        return listing

    async def _list(self, path: tuple[str, ...]) -> Listing:
        """The folder's children in one listing (paged): files and folders alike."""
        try:
            folder = await self._folders.find(path)
            if folder is None:
                return Listing()
            items = await self._api.list(f"{quote(folder.id)} in parents and trashed = false", folder, FILE_FIELDS)
        except NotFound:
            return Listing()
        subfolders = {item["name"] for item in items if is_folder(item)}
        # Drive allows one name twice in a folder: by name, then newest first, then by id, so replicas agree.
        files = sorted((item for item in items if not is_folder(item)), key=lambda i: i["id"])
        files.sort(key=lambda i: i.get("modifiedTime", ""), reverse=True)
        files.sort(key=lambda i: i["name"])
        masters = [await self._master(item, path) for item in files]
        return Listing([m for m in masters if m is not None], sorted(subfolders))

    async def _master(self, item: dict[str, Any], path: tuple[str, ...]) -> Master | None:
        """The Master for a listed item: shortcuts followed; trashed and Google-native files skipped.

        A shortcut is followed (a request each) only when its name is a media file's: nothing else is a master.
        """
        name = item["name"]
        if item.get("mimeType") == SHORTCUT:
            if not any(split_extension(name, kind) for kind in KINDS):
                return None
            try:
                item = await self._api.get(item["shortcutDetails"]["targetId"], FILE_FIELDS)
            except NotFound:
                return None
        mime = item.get("mimeType", "")
        if item.get("trashed") or mime.startswith(GOOGLE_NATIVE) or "size" not in item:
            return None
        md5, sha256 = item.get("md5Checksum"), item.get("sha256Checksum")
        return Master(
            catalog=self.name,
            object="drive:" + "/".join((*path, name)),
            name=name,
            size=int(item["size"]),
            ref=item["id"],
            md5=md5.lower() if md5 else None,
            sha256=sha256.lower() if sha256 else None,
        )

    async def probe(self) -> str:
        """List the root folder, proving the credentials, the endpoint and the root id all work."""
        root = await self._folders.root()
        q = f"{quote(root.id)} in parents and trashed = false"
        page = await self._api.list_page(q, root, "id", page_size=10, what="probe")
        count = f"{len(page.get('files', []))}{'+' if page.get('nextPageToken') else ''}"
        where = f"shared drive {root.drive_id}" if root.drive_id else "My Drive"
        return (
            f"drive folder {self._folders.root_name!r} ({root.id}, {where}): "
            f"{count} items visible to {self._api.principal}"
        )

    # -- measuring -----------------------------------------------------------------------

    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        """One ranged media download, failing as downloads do (downloadQuotaExceeded: CatalogError;
        throttling and outages: CatalogUnavailable with Drive's Retry-After)."""
        if offset < 0 or length < 0:
            raise ValueError(f"offset and length must be >= 0, got {offset} and {length}")
        if length == 0 or offset >= master.size:
            return b""  # a range past the end is a 416: nothing to ask
        return await asyncio.to_thread(self._read_range, master, offset, offset + length - 1)

    def _read_range(self, master: Master, first: int, last: int) -> bytes:
        what = f"read {master.object}"
        try:
            # Measuring follows the stream's first chunk: a stream that met the quota has a copy to read.
            response = self._api.open_media(self._copies.file_id(master), first, what, end=last)
        except NotFound:
            raise CatalogUnavailable(f"drive: {what} ({master.ref}): it vanished since it was found (404)") from None
        try:
            return response.read(decode_content=False)  # no more than the range
        except urllib3.exceptions.HTTPError as exc:  # a short body, a reset, a read timeout
            raise CatalogUnavailable(f"drive: {what}: {exc!r}") from exc
        finally:
            release(response)

    # -- streaming -----------------------------------------------------------------------

    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> SourceStream:
        """The bytes from ``start``; a cut connection resumes by Range, up to ``max_resumes`` times.

        A whole-file stream (``start == 0``) of a file without a sha256Checksum is
        checked against Drive's md5Checksum at the end and raises CatalogError on a
        mismatch, so it is never reported complete. When Drive publishes the
        SHA-256, the upload checks that instead, on the hash it computes anyway:
        MD5 would cost a second pass over every byte for a weaker check.
        """
        return SourceStream(lambda: asyncio.to_thread(self._source, master, start), chunk_size)

    def _source(self, master: Master, start: int) -> _MediaSource:
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        source = _MediaSource(self._api, self._copies, master, start, self._max_resumes)
        source.connect()
        return source

    async def aclose(self) -> None:
        await self._api.aclose()


class _MediaSource(Source):
    """One file's bytes from ``start``, over as many GETs as cuts need (each resuming by Range).

    Whole chunks come straight from the socket: far less CPU per byte than an
    event-loop HTTP client's 64 KiB reads. A cut connection first hands over the
    bytes that did arrive, then raises, so the resume asks only for what is
    missing. The MD5, when it is the check, is computed as the bytes are read:
    it is the rare file Drive has no SHA-256 for.
    """

    def __init__(self, api: DriveApi, copies: QuotaCopies, master: Master, start: int, max_resumes: int):
        self._api, self._copies, self._master, self._max_resumes = api, copies, master, max_resumes
        self._copy: str | None = None  # the copy streamed instead, once the original met its download quota
        self._offset, self._resumes = start, 0
        self._md5 = hashlib.md5() if start == 0 and master.md5 and not master.sha256 else None
        self._response: urllib3.HTTPResponse | None = None
        self._cause = "the body ended early"

    def connect(self) -> None:
        """Open the GET from the current offset (none is needed at the end)."""
        if self._offset >= self._master.size:
            return
        what = f"download {self._master.object}"
        try:
            try:
                self._response = self._api.open_media(self._copy or self._master.ref, self._offset, what)
            except QuotaExceeded as exc:
                if self._copy is not None:
                    raise
                self._copy = self._copies.make(self._master, exc)
                self._response = self._api.open_media(self._copy, self._offset, what)
        except NotFound:
            # It was there when found; the job's next attempt will look again and skip if it is gone.
            raise CatalogUnavailable(
                f"drive: {self._master.object} ({self._master.ref}) vanished since it was found (404)"
            ) from None

    def readinto(self, buffer: memoryview) -> int:
        master = self._master
        while self._response is not None:
            try:
                data = self._response.read(len(buffer), decode_content=False)
            except urllib3.exceptions.HTTPError as exc:  # a short body, a reset, a read timeout
                data, self._cause = b"", repr(exc)
            if data:
                buffer[: len(data)] = data
                self._offset += len(data)
                if self._md5 is not None:
                    self._md5.update(data)
                return len(data)
            release(self._response)
            self._response = None
            if self._offset >= master.size:
                break
            self._resumes += 1
            if self._resumes > self._max_resumes:
                raise CatalogUnavailable(
                    f"drive: download of {master.object} cut {self._resumes} times"
                    f" (at byte {self._offset} of {master.size}): {self._cause}"
                )
            log.warning("drive: download of %s cut at byte %d (%s); resuming", master.object, self._offset,
                        self._cause)
            self._cause = "the body ended early"
            self.connect()
        if self._offset != master.size:
            raise CatalogError(
                f"drive: {master.object} sent {self._offset} bytes, but Drive lists its size as {master.size}"
            )
        md5 = self._md5.hexdigest() if self._md5 is not None else master.md5
        if md5 != master.md5:
            raise CatalogError(
                f"drive: md5 mismatch for {master.object}: Drive lists {master.md5}, the bytes received hash to {md5}"
            )
        return 0

    def close(self) -> None:
        if self._response is not None:
            release(self._response)
            self._response = None
        if self._copy is not None:
            copy, self._copy = self._copy, None
            self._copies.drop(self._master, copy)
