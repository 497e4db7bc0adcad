"""Copies that get a popular master past Drive's per-file download quota.

Drive limits how often one file may be downloaded in a while
(``downloadQuotaExceeded``); the limit is the file's, so a fresh copy of it
downloads at once. Teams do this by hand: copy, download the copy, delete it.
With ``catalogs.<name>.quota_copy_folder_id`` a download that meets the quota
does the same: the copy goes into that folder (the service account must be
able to write there, so the catalog asks for Drive's full scope), is streamed
in the original's place, and is deleted when the stream closes, whether the
job delivered it or failed. Its size and checksums are the original's, so the
checks on the bytes are unchanged. A process killed mid-stream leaves its copy
behind: each is named ``<name> (fulfiller quota copy)``, for an operator to
find and delete.

Everything here blocks: it runs on the thread that reads the download.
"""

from __future__ import annotations

import logging
import threading

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable, Master
from fulfiller.catalogs.drive_api import DriveApi, NotFound, QuotaExceeded

__all__ = ["MARK", "QuotaCopies"]

log = logging.getLogger(__name__)

MARK = "fulfiller quota copy"


class QuotaCopies:
    """The copies a catalog made and has not deleted yet, by the original's id."""

    def __init__(self, api: DriveApi, catalog: str, folder_id: str | None) -> None:
        self._api, self._catalog, self._folder_id = api, catalog, folder_id
        self._live: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def make(self, master: Master, refused: QuotaExceeded) -> str:
        """A copy of ``master`` to download instead (its id), or ``refused`` again, saying how to get one."""
        if self._folder_id is None:
            raise QuotaExceeded(f"{refused}; or set catalogs.{self._catalog}.quota_copy_folder_id to a folder the "
                                "service account can write to, and the fulfiller streams a copy") from None
        copy_id = self._api.copy(master.ref, self._folder_id, f"{master.name} ({MARK})")
        with self._lock:
            self._live.setdefault(master.ref, []).append(copy_id)
        log.info("drive: %s met its download quota: streaming a copy (%s)", master.object, copy_id)
        return copy_id

    def file_id(self, master: Master) -> str:
        """The id to read ``master`` by: a live copy's, when one was made (its original is over quota)."""
        with self._lock:
            copies = self._live.get(master.ref)
            return copies[-1] if copies else master.ref

    def drop(self, master: Master, copy_id: str) -> None:
        """Delete a copy once its stream is closed; a failure is logged, never raised (the job is done)."""
        with self._lock:
            copies = self._live.get(master.ref, [])
            if copy_id in copies:
                copies.remove(copy_id)
            if not copies:
                self._live.pop(master.ref, None)
        try:
            self._api.delete(copy_id)
        except NotFound:
            pass  # someone deleted it already
        except (CatalogError, CatalogUnavailable) as exc:
            log.warning("drive: could not delete the quota copy %s of %s (delete it by hand): %s", copy_id,
                        master.object, exc)
