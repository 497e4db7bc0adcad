"""The Drive folder tree under a catalog's root: paths walked to folder ids, and the ids cached.

Drive has no paths, only parents: finding ``a/b/c`` is one listing per
segment. Jobs for one creative look in the same folders, so the ids found are
kept for ``cache_s`` seconds, the ``cache_max`` used last, and concurrent look-ups
of one path share a single walk.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from functools import partial

from fulfiller.catalogs.base import CatalogError
from fulfiller.catalogs.drive_api import FOLDER, SHORTCUT, DriveApi, Folder, NotFound, is_folder, quote


class DriveFolders:
    """The folders under the root folder ``root_id``, found by path."""

    def __init__(self, api: DriveApi, root_id: str, cache_s: float, cache_max: int = 10_000):
        self._api = api
        self._root_id = root_id
        self._cache_s = cache_s
        self._cache_max = cache_max
        self._root: Folder | None = None
        self.root_name = ""  # known once ``root`` has answered
        # Path -> (expiry, folder), least recently used first.
        self._cached: OrderedDict[tuple[str, ...], tuple[float, Folder]] = OrderedDict()
        self._walks: dict[tuple[str, ...], asyncio.Task[Folder | None]] = {}

    async def root(self) -> Folder:
        """The root folder; CatalogError when it is missing, not shared with us, or not a folder."""
        if self._root is None:
            try:
                root = await self._api.get(self._root_id, "id,name,mimeType,driveId")
            except NotFound:
                raise CatalogError(
                    f"drive: root_folder_id {self._root_id!r} not found, or not shared with {self._api.principal}"
                ) from None
            if root.get("mimeType") != FOLDER:
                raise CatalogError(f"drive: root_folder_id {self._root_id!r} is a {root.get('mimeType')}, not a folder")
            self._root, self.root_name = Folder(root["id"], root.get("driveId")), root.get("name", "")
        return self._root

    async def find(self, path: tuple[str, ...]) -> Folder | None:
        """The folder at ``path`` under the root, or None; concurrent look-ups of one path share a walk."""
        if not path:
            return await self.root()
        cached = self.cached(path)
        if cached is not None:
            return cached
        walk = self._walks.get(path)
        if walk is None:
            walk = asyncio.get_running_loop().create_task(self._walk(path))
            self._walks[path] = walk
            walk.add_done_callback(partial(self._walk_done, path))
        return await asyncio.shield(walk)

    def cached(self, path: tuple[str, ...]) -> Folder | None:
        """The folder at ``path`` if a walk found it less than ``cache_s`` ago (it is then the last used)."""
        hit = self._cached.get(path)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self._cached[path]
            return None
        self._cached.move_to_end(path)
        return hit[1]

    def forget(self, path: tuple[str, ...]) -> None:
        """Drop ``path`` and the folders above it from the cache: the next look-up walks afresh."""
        for i in range(len(path) + 1):
            self._cached.pop(path[:i], None)

    def _remember(self, path: tuple[str, ...], folder: Folder) -> None:
        self._cached[path] = (time.monotonic() + self._cache_s, folder)
        self._cached.move_to_end(path)
        if len(self._cached) > self._cache_max:
            self._cached.popitem(last=False)  # the least recently used

    def _walk_done(self, path: tuple[str, ...], walk: asyncio.Task[Folder | None]) -> None:
        self._walks.pop(path, None)
        if not walk.cancelled():
            walk.exception()  # retrieved: a failure nobody was left awaiting is not reported as lost

    async def _walk(self, path: tuple[str, ...]) -> Folder | None:
        parent = await self.find(path[:-1])
        if parent is None:
            return None
        q = f"{quote(parent.id)} in parents and name = {quote(path[-1])} and trashed = false"
        items = await self._api.list(q, parent, "id,name,mimeType,driveId,shortcutDetails")
        # Real folders before shortcuts to folders, then by id: a stable pick among same-named folders.
        candidates = sorted((i for i in items if is_folder(i)), key=lambda i: (i.get("mimeType") != FOLDER, i["id"]))
        for item in candidates:
            if item["mimeType"] == SHORTCUT:
                try:
                    item = await self._api.get(item["shortcutDetails"]["targetId"], "id,mimeType,trashed,driveId")
                except NotFound:
                    continue
                if item.get("trashed") or item.get("mimeType") != FOLDER:
                    continue
            folder = Folder(item["id"], item.get("driveId"))
            self._remember(path, folder)
            return folder
        return None
