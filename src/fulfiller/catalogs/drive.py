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
from collections.abc import AsyncGenerator
from typing import Any

import urllib3
from google.auth.credentials import Credentials

from fulfiller.bulkhttp import release
from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Master
from fulfiller.catalogs.drive_api import (
    FOLDER,
    GOOGLE_NATIVE,
    SHORTCUT,
    DriveApi,
    NotFound,
    load_credentials,
    quote,
)
from fulfiller.catalogs.drive_folders import DriveFolders
from fulfiller.config import DriveCatalogConfig
from fulfiller.media import rank

log = logging.getLogger(__name__)

# What finding a master reads of each file: a shortcut's target, the sort of same-named files, the checksums.
FILE_FIELDS = "id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,trashed,shortcutDetails"


class _Digest:
    """MD5 of a stream, computed in a worker thread while the stream goes on.

    hashlib releases the GIL on large buffers, so hashing one chunk overlaps
    receiving the next and uploading this one; updates stay in order because
    each waits for the one before. Small chunks are hashed in place.
    """

    _THREAD_MIN = 256 * 1024

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self._pending: asyncio.Future[None] | None = None

    async def update(self, chunk: bytes) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None
        if len(chunk) < self._THREAD_MIN:
            self._md5.update(chunk)
        else:
            self._pending = asyncio.get_running_loop().run_in_executor(None, self._md5.update, chunk)

    async def hexdigest(self) -> str:
        if self._pending is not None:
            await self._pending
            self._pending = None
        return self._md5.hexdigest()


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
    ):
        super().__init__(name, layout)
        self._api = DriveApi(credentials, api_endpoint=api_endpoint, timeout_s=timeout_s)
        self._folders = DriveFolders(self._api, root_folder_id, folder_cache_s)
        self._max_resumes = max_resumes

    @classmethod
    def from_config(cls, name: str, cfg: DriveCatalogConfig) -> DriveCatalog:
        """The catalog ``cfg`` describes; its credentials are loaded now (CatalogError when unusable)."""
        return cls(
            name,
            cfg.root_folder_id,
            load_credentials(cfg.credentials_file),
            layout=cfg.layout,
            api_endpoint=cfg.api_endpoint,
            folder_cache_s=cfg.folder_cache_s,
        )

    # -- finding -------------------------------------------------------------------------

    async def find_in(self, folders: list[str], stem: str, kind: str) -> list[Master]:
        path = tuple(folders)
        was_cached = self._folders.cached(path) is not None
        masters = await self._look_in(path, stem, kind)
        if not masters and was_cached:
            # A cached folder id may be stale (folder deleted and recreated): look once more, afresh.
            self._folders.forget(path)
            masters = await self._look_in(path, stem, kind)
        return masters

    async def _look_in(self, path: tuple[str, ...], stem: str, kind: str) -> list[Master]:
        try:
            folder = await self._folders.find(path)
            if folder is None:
                return []
            q = f"{quote(folder.id)} in parents and trashed = false and mimeType != '{FOLDER}'"
            items = await self._api.list(q, folder, FILE_FIELDS)
        except NotFound:
            return []
        by_name: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            by_name.setdefault(item["name"], []).append(item)
        masters: list[Master] = []
        for name in rank(list(by_name), stem, kind):
            # Drive allows one name twice in a folder: newest first, then by id, so replicas agree.
            same = sorted(by_name[name], key=lambda i: i["id"])
            same.sort(key=lambda i: i.get("modifiedTime", ""), reverse=True)
            for item in same:
                master = await self._master(item, path)
                if master is not None:
                    masters.append(master)
        return masters

    async def _master(self, item: dict[str, Any], path: tuple[str, ...]) -> Master | None:
        """The Master for a listed item: shortcuts followed; trashed and Google-native files skipped."""
        name = item["name"]
        if item.get("mimeType") == SHORTCUT:
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

    # -- streaming -----------------------------------------------------------------------

    async def _open(self, master: Master, start: int) -> urllib3.HTTPResponse:
        try:
            return await self._api.open_media(master.ref, start, f"download {master.object}")
        except NotFound:
            # It was there when found; the job's next attempt will look again and skip if it is gone.
            raise CatalogUnavailable(
                f"drive: {master.object} ({master.ref}) vanished since it was found (404)"
            ) from None

    async def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """The bytes from ``start``; a cut connection resumes by Range, up to ``max_resumes`` times.

        A whole-file stream (``start == 0``) of a file without a sha256Checksum is
        checked against Drive's md5Checksum at the end and raises CatalogError on a
        mismatch, so it is never reported complete. When Drive publishes the
        SHA-256, the upload checks that instead, on the hash it computes anyway:
        MD5 would cost a second pass over every byte for a weaker check.
        """
        digest = _Digest() if start == 0 and master.md5 and not master.sha256 else None
        offset, resumes = start, 0
        while offset < master.size:
            response = await self._open(master, offset)
            cause = "the body ended early"
            try:
                # Whole chunks straight from the socket in a worker thread: far less CPU per byte
                # than an event-loop HTTP client's 64 KiB reads. A cut connection first hands over
                # the bytes that did arrive, then raises, so the resume asks only for what is missing.
                while chunk := await asyncio.to_thread(response.read, chunk_size, decode_content=False):
                    offset += len(chunk)
                    if digest is not None:
                        await digest.update(chunk)
                    yield chunk
            except urllib3.exceptions.HTTPError as exc:  # a short body, a reset, a read timeout
                cause = repr(exc)
            finally:
                await asyncio.to_thread(release, response)
            if offset >= master.size:
                break
            resumes += 1
            if resumes > self._max_resumes:
                raise CatalogUnavailable(
                    f"drive: download of {master.object} cut {resumes} times"
                    f" (at byte {offset} of {master.size}): {cause}"
                )
            log.warning("drive: download of %s cut at byte %d (%s); resuming", master.object, offset, cause)
        if offset != master.size:
            raise CatalogError(f"drive: {master.object} sent {offset} bytes, but Drive lists its size as {master.size}")
        md5 = await digest.hexdigest() if digest is not None else master.md5
        if md5 != master.md5:
            raise CatalogError(
                f"drive: md5 mismatch for {master.object}: Drive lists {master.md5}, the bytes received hash to {md5}"
            )

    async def aclose(self) -> None:
        await self._api.aclose()
