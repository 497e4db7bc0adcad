"""Google Drive as a catalog of masters (Drive API v3).

Metadata calls go through google-api-python-client (static discovery, so
building the client touches no network) and run in worker threads, because
``execute()`` blocks. Downloads bypass it: one authorized streaming GET of the
media URL through urllib3, read in whole chunks in worker threads, so a master
of any size never sits in memory, and a connection cut mid-file resumes with a
Range request instead of starting over.

Drive is strict in ways that fail silently: without ``supportsAllDrives`` and
``includeItemsFromAllDrives`` a Shared Drive's items are simply missing from
listings, so every call sends them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from typing import Any, NamedTuple, TypeVar

import google.auth
import google_auth_httplib2
import httplib2
import urllib3
from google.auth.credentials import Credentials
from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import HttpRequest
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, stop_before_delay
from tenacity.wait import wait_exponential_jitter

from fulfiller.bulkhttp import BulkHttp, release
from fulfiller.catalogs.base import Catalog, CatalogError, CatalogUnavailable, Master
from fulfiller.config import DriveCatalogConfig
from fulfiller.media import rank
from fulfiller.retry import parse_retry_after

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/drive.readonly"
DEFAULT_ENDPOINT = "https://www.googleapis.com/drive/v3/"
FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
GOOGLE_NATIVE = "application/vnd.google-apps."
FILE_FIELDS = (
    "id,name,mimeType,size,md5Checksum,sha256Checksum,modifiedTime,trashed,driveId,"
    "shortcutDetails,videoMediaMetadata,imageMediaMetadata"
)
# Kept on Master.metadata when Drive sends them (media metadata is often missing).
_METADATA_KEYS = ("mimeType", "modifiedTime", "sha256Checksum", "driveId", "videoMediaMetadata", "imageMediaMetadata")
_RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
# 403 reasons that no retry fixes, explained for the operator who reads the job's error.
_DOWNLOAD_DENIED = {
    "downloadQuotaExceeded": "the file's download quota is exhausted; try later or copy it",
    "cannotDownloadFile": "Drive refuses to serve this file (downloading is disabled for it); "
    "ask its owner to allow downloads or copy it",
    "cannotDownloadAbusiveFile": "Drive flagged this file as malware or abuse and will not serve it; "
    "replace the master",
}
_FOLDER_CACHE_MAX = 10_000
# Connections kept per host: every job of a process may be downloading at once.
_MAX_DOWNLOADS = 32

T = TypeVar("T")


class _Transient(CatalogUnavailable):
    """A failure worth retrying here; ``retry_after`` is the server's requested pause, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _NotFound(Exception):
    """Drive answered 404."""


class _Folder(NamedTuple):
    id: str
    drive_id: str | None  # set for Shared Drive folders: listings then ask that drive's corpus


def _quote(value: str) -> str:
    """A string literal for a Drive ``q`` query: backslashes and single quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _error_reason(body: bytes) -> tuple[str, str]:
    """Drive's machine reason (``errors[0].reason``) and message from an error body."""
    try:
        error = json.loads(body)["error"]
        first = (error.get("errors") or [{}])[0]
        return str(first.get("reason") or error.get("status") or ""), str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        return "", body[:200].decode("utf-8", "replace")


def _failure(status: int, body: bytes, retry_after: str | None, what: str) -> Exception:
    """The exception an error response stands for: transient, not found, or permanent."""
    reason, message = _error_reason(body)
    if status == 404:
        return _NotFound(f"drive: {what}: not found")
    if status in (408, 429) or status >= 500 or (status == 403 and reason in _RATE_LIMIT_REASONS):
        return _Transient(f"drive: {what}: HTTP {status} {reason}".rstrip(), parse_retry_after(retry_after))
    if status == 403 and reason in _DOWNLOAD_DENIED:
        return CatalogError(f"drive: {reason}: {_DOWNLOAD_DENIED[reason]} ({what})")
    if status == 401:
        return CatalogError(f"drive: {what}: credentials rejected even after a token refresh (HTTP 401): {message}")
    return CatalogError(f"drive: {what}: HTTP {status} {reason}: {message}")


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


def _auth_failure(exc: RefreshError | TransportError, what: str) -> Exception:
    """A token that could not be obtained: transient when google-auth says so."""
    if isinstance(exc, TransportError) or exc.retryable:
        return _Transient(f"drive: {what}: cannot reach the token endpoint: {exc}")
    return CatalogError(f"drive: {what}: cannot obtain an access token: {exc}")


def load_credentials(credentials_file: str) -> Credentials:
    """A service account's key file, else application default credentials.

    Only the service-account type is read from ``credentials_file``: a generic
    loader would also accept external-account configs that make google-auth
    run commands or fetch URLs named in the file.
    """
    try:
        if credentials_file:
            return service_account.Credentials.from_service_account_file(credentials_file, scopes=[SCOPE])
        credentials, _ = google.auth.default(scopes=[SCOPE])
    except (DefaultCredentialsError, OSError, ValueError, KeyError) as exc:
        raise CatalogError(f"drive: no usable credentials: {exc!r}") from None
    return credentials


class DriveCatalog(Catalog):
    """Masters in a Drive folder (or Shared Drive) tree, found by the layout template.

    ``max_retry_s`` caps the time spent retrying one call (throttling, 5xx,
    network); past it the call raises CatalogUnavailable. ``backoff_base_s``
    scales the exponential backoff; ``sleep`` performs the waits (tests pass a
    recorder to see that Retry-After is honoured without waiting for it).
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
        max_retry_s: float = 120.0,
        backoff_base_s: float = 1.0,
        max_resumes: int = 5,
        timeout_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        super().__init__(name, layout)
        endpoint = (api_endpoint or DEFAULT_ENDPOINT).rstrip("/") + "/"
        if not endpoint.endswith("/drive/v3/"):
            raise CatalogError(f"drive: api_endpoint must end in /drive/v3/ (got {endpoint!r})")
        self._endpoint = endpoint
        self._root_id = root_folder_id
        self._credentials = credentials
        self._folder_cache_s = folder_cache_s
        self._max_retry_s = max_retry_s
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_base_s, max=max(32.0, backoff_base_s), jitter=backoff_base_s
        )
        self._max_resumes = max_resumes
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._service = build(
            "drive",
            "v3",
            credentials=credentials,
            client_options={"api_endpoint": endpoint},
            static_discovery=True,
            cache_discovery=False,
        )
        self._local = threading.local()  # httplib2 is not thread-safe: one authorized Http per worker thread
        self._pool = BulkHttp(timeout_s, _MAX_DOWNLOADS, redirects=5)
        self._auth_lock = asyncio.Lock()
        self._root: _Folder | None = None
        self._root_name = ""
        self._folders: dict[tuple[str, ...], tuple[float, _Folder]] = {}
        self._walks: dict[tuple[str, ...], asyncio.Task[_Folder | None]] = {}

    @classmethod
    def from_config(cls, name: str, cfg: DriveCatalogConfig) -> DriveCatalog:
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
        was_cached = self._cached(path) is not None
        masters = await self._look_in(path, stem, kind)
        if not masters and was_cached:
            # A cached folder id may be stale (folder deleted and recreated): look once more, afresh.
            self._forget(path)
            masters = await self._look_in(path, stem, kind)
        return masters

    async def _look_in(self, path: tuple[str, ...], stem: str, kind: str) -> list[Master]:
        try:
            folder = await self._folder(path)
            if folder is None:
                return []
            q = f"{_quote(folder.id)} in parents and trashed = false and mimeType != '{FOLDER}'"
            items = await self._list(q, folder, FILE_FIELDS)
        except _NotFound:
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
        name, shortcut_id = item["name"], None
        if item.get("mimeType") == SHORTCUT:
            shortcut_id = item["id"]
            try:
                item = await self._get(item["shortcutDetails"]["targetId"], FILE_FIELDS)
            except _NotFound:
                return None
        mime = item.get("mimeType", "")
        if item.get("trashed") or mime.startswith(GOOGLE_NATIVE) or "size" not in item:
            return None
        metadata = {key: item[key] for key in _METADATA_KEYS if key in item}
        if shortcut_id:
            metadata["shortcutId"] = shortcut_id
        md5, sha256 = item.get("md5Checksum"), item.get("sha256Checksum")
        return Master(
            catalog=self.name,
            object="drive:" + "/".join((*path, name)),
            name=name,
            size=int(item["size"]),
            ref=item["id"],
            md5=md5.lower() if md5 else None,
            sha256=sha256.lower() if sha256 else None,
            metadata=metadata,
        )

    # -- folder walk, cached -------------------------------------------------------------

    def _cached(self, path: tuple[str, ...]) -> _Folder | None:
        hit = self._folders.get(path)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def _forget(self, path: tuple[str, ...]) -> None:
        for i in range(len(path) + 1):
            self._folders.pop(path[:i], None)

    def _remember(self, path: tuple[str, ...], folder: _Folder) -> None:
        now = time.monotonic()
        if len(self._folders) >= _FOLDER_CACHE_MAX:
            self._folders = {p: hit for p, hit in self._folders.items() if hit[0] > now}
        self._folders[path] = (now + self._folder_cache_s, folder)

    async def _folder(self, path: tuple[str, ...]) -> _Folder | None:
        """The folder at ``path`` under the root, or None; concurrent lookups of one path share a walk."""
        if not path:
            return await self._root_folder()
        cached = self._cached(path)
        if cached is not None:
            return cached
        walk = self._walks.get(path)
        if walk is None:
            walk = asyncio.get_running_loop().create_task(self._walk(path))
            self._walks[path] = walk
            walk.add_done_callback(partial(self._walk_done, path))
        return await asyncio.shield(walk)

    def _walk_done(self, path: tuple[str, ...], walk: asyncio.Task[_Folder | None]) -> None:
        self._walks.pop(path, None)
        if not walk.cancelled():
            walk.exception()  # retrieved: a failure nobody was left awaiting is not reported as lost

    async def _walk(self, path: tuple[str, ...]) -> _Folder | None:
        parent = await self._folder(path[:-1])
        if parent is None:
            return None
        q = f"{_quote(parent.id)} in parents and name = {_quote(path[-1])} and trashed = false"
        items = await self._list(q, parent, "id,name,mimeType,driveId,shortcutDetails")
        # Real folders before shortcuts to folders, then by id: a stable pick among same-named folders.
        candidates = sorted(
            (i for i in items if FOLDER in (i.get("mimeType"), i.get("shortcutDetails", {}).get("targetMimeType"))),
            key=lambda i: (i.get("mimeType") != FOLDER, i["id"]),
        )
        for item in candidates:
            if item["mimeType"] == SHORTCUT:
                try:
                    item = await self._get(item["shortcutDetails"]["targetId"], "id,mimeType,trashed,driveId")
                except _NotFound:
                    continue
                if item.get("trashed") or item.get("mimeType") != FOLDER:
                    continue
            folder = _Folder(item["id"], item.get("driveId"))
            self._remember(path, folder)
            return folder
        return None

    async def _root_folder(self) -> _Folder:
        if self._root is None:
            try:
                root = await self._get(self._root_id, "id,name,mimeType,driveId")
            except _NotFound:
                raise CatalogError(
                    f"drive: root_folder_id {self._root_id!r} not found, or not shared with {self._principal()}"
                ) from None
            if root.get("mimeType") != FOLDER:
                raise CatalogError(f"drive: root_folder_id {self._root_id!r} is a {root.get('mimeType')}, not a folder")
            self._root, self._root_name = _Folder(root["id"], root.get("driveId")), root.get("name", "")
        return self._root

    def _principal(self) -> str:
        return getattr(self._credentials, "service_account_email", None) or "these credentials"

    async def probe(self) -> str:
        """List the root folder, proving the credentials, the endpoint and the root id all work."""
        root = await self._root_folder()
        page = await self._execute(
            lambda: self._service.files().list(
                q=f"{_quote(root.id)} in parents and trashed = false",
                fields="nextPageToken,files(id)",
                pageSize=10,
                **self._list_scope(root),
            ),
            "probe",
        )
        count = f"{len(page.get('files', []))}{'+' if page.get('nextPageToken') else ''}"
        where = f"shared drive {root.drive_id}" if root.drive_id else "My Drive"
        return f"drive folder {self._root_name!r} ({root.id}, {where}): {count} items visible to {self._principal()}"

    # -- metadata calls ------------------------------------------------------------------

    @staticmethod
    def _list_scope(folder: _Folder) -> dict[str, Any]:
        """List parameters that make Shared Drive items visible (they are silently missing otherwise)."""
        scope: dict[str, Any] = {"supportsAllDrives": True, "includeItemsFromAllDrives": True}
        if folder.drive_id:
            scope.update(corpora="drive", driveId=folder.drive_id)
        return scope

    async def _list(self, q: str, folder: _Folder, fields: str) -> list[dict[str, Any]]:
        """Every item matching ``q``, across pages."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self._execute(
                partial(
                    self._service.files().list,
                    q=q,
                    fields=f"nextPageToken,files({fields})",
                    pageSize=1000,
                    pageToken=token,
                    **self._list_scope(folder),
                ),
                "list",
            )
            items.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return items

    async def _get(self, file_id: str, fields: str) -> dict[str, Any]:
        return await self._execute(
            lambda: self._service.files().get(fileId=file_id, fields=fields, supportsAllDrives=True), f"get {file_id}"
        )

    def _thread_http(self) -> google_auth_httplib2.AuthorizedHttp:
        http = getattr(self._local, "http", None)
        if http is None:
            # max_refresh_attempts=1: a 401 refreshes the token once, then the request is retried once.
            http = google_auth_httplib2.AuthorizedHttp(
                self._credentials, http=httplib2.Http(timeout=self._timeout_s), max_refresh_attempts=1
            )
            self._local.http = http
        return http

    async def _execute(self, make: Callable[[], HttpRequest], what: str) -> dict[str, Any]:
        """Run a metadata request in a worker thread, retried on throttling and transient failures."""

        def call() -> dict[str, Any]:
            try:
                return make().execute(http=self._thread_http())
            except HttpError as exc:
                raise _failure(exc.status_code, exc.content, exc.resp.get("retry-after"), what) from exc
            except (RefreshError, TransportError) as exc:
                raise _auth_failure(exc, what) from exc
            except (httplib2.HttpLib2Error, OSError) as exc:
                raise _Transient(f"drive: {what}: {exc!r}") from exc

        return await self._retrying(lambda: asyncio.to_thread(call))

    # -- retries -------------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never shorter than the server's Retry-After."""
        exc = state.outcome.exception() if state.outcome else None
        return max(self._backoff(state), getattr(exc, "retry_after", None) or 0.0)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s; retry %d in %.2fs", exc, state.attempt_number, wait)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            wait=self._wait,
            stop=stop_before_delay(self._max_retry_s),
            sleep=self._sleep,
            before_sleep=self._log_retry,
        )

        async def call() -> T:  # tenacity awaits only what it sees is a coroutine function
            return await attempt()

        try:
            return await retrying(call)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise CatalogUnavailable(
                f"{last}; gave up after {exc.last_attempt.attempt_number} attempts (max_retry_s={self._max_retry_s:g})"
            ) from last

    # -- downloads -----------------------------------------------------------------------

    async def _auth_headers(self, rejected: str | None = None) -> dict[str, str]:
        """Authorization for a download; refreshes (off the loop) when stale or when ``rejected`` was refused."""
        async with self._auth_lock:
            creds = self._credentials
            if not creds.valid or (rejected is not None and creds.token == rejected):
                request = google_auth_httplib2.Request(httplib2.Http(timeout=self._timeout_s))
                try:
                    await asyncio.to_thread(creds.refresh, request)
                except (RefreshError, TransportError) as exc:
                    raise _auth_failure(exc, "download") from exc
            headers: dict[str, str] = {}
            creds.apply(headers)
            return headers

    async def _open(self, master: Master, start: int, end: int | None) -> urllib3.HTTPResponse:
        """One GET of the media (a 401 refreshes the token once); an open response with status 200 or 206."""
        url = f"{self._endpoint}files/{master.ref}?alt=media&supportsAllDrives=true"
        ranged = start > 0 or end is not None
        # identity: byte offsets, Range and the md5 all refer to the stored bytes, never to a compressed form.
        extra = {"Accept-Encoding": "identity"}
        if ranged:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"

        def get(headers: dict[str, str]) -> urllib3.HTTPResponse:
            return self._pool.request(
                "GET", url, headers={**headers, **extra}, preload_content=False, decode_content=False
            )

        headers = await self._auth_headers()
        try:
            response = await asyncio.to_thread(get, headers)
            if response.status == 401:
                await asyncio.to_thread(release, response)
                headers = await self._auth_headers(rejected=headers.get("authorization", "").removeprefix("Bearer "))
                response = await asyncio.to_thread(get, headers)
            if response.status == 206 or (response.status == 200 and not ranged):
                return response
            # never pull a whole file here
            body = b"" if response.status == 200 else await asyncio.to_thread(response.read, decode_content=False)
            await asyncio.to_thread(release, response)
        except urllib3.exceptions.HTTPError as exc:
            raise _Transient(f"drive: download {master.object}: {exc!r}") from exc
        if response.status == 200:
            raise CatalogError(f"drive: {self._endpoint} ignored a Range request; a proxy in the way must pass Range")
        raise _failure(response.status, body, response.headers.get("retry-after"), f"download {master.object}")

    async def _media_retrying(self, master: Master, attempt: Callable[[], Awaitable[T]]) -> T:
        try:
            return await self._retrying(attempt)
        except _NotFound:
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
            response = await self._media_retrying(master, partial(self._open, master, offset, None))
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

    async def read_range(self, master: Master, start: int, length: int) -> bytes:
        if length <= 0 or start >= master.size:
            return b""
        end = min(start + length, master.size) - 1

        async def attempt() -> bytes:
            response = await self._open(master, start, end)
            try:
                return await asyncio.to_thread(response.read, decode_content=False)
            except urllib3.exceptions.HTTPError as exc:
                raise _Transient(f"drive: read {master.object}: {exc!r}") from exc
            finally:
                await asyncio.to_thread(release, response)

        return await self._media_retrying(master, attempt)

    async def aclose(self) -> None:
        self._pool.clear()
