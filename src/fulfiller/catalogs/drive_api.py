"""Access to the Drive API v3: credentials, authorised requests, and Drive's errors as catalog errors.

Metadata calls go through google-api-python-client (static discovery, so
building the client touches no network) and run in worker threads, because
``execute()`` blocks. Downloads bypass it: one authorised streaming GET of the
media URL through urllib3, which the caller reads in whole chunks.

Each request is tried once. A 401 refreshes the access token once and repeats
the request: an expired token is routine, not a failure. Every other failure is
reported for the engine to judge: throttling (429, the rate-limit 403s), 5xx,
timeouts and cut connections as CatalogUnavailable, with Drive's Retry-After;
refusals no retry changes as CatalogError; a 404 as NotFound, which only the
caller can interpret.

Drive is strict in ways that fail silently: without ``supportsAllDrives`` and
``includeItemsFromAllDrives`` a Shared Drive's items are simply missing from
listings, so every call sends them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

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

from fulfiller.bulkhttp import BulkHttp, release
from fulfiller.catalogs.base import CatalogError, CatalogUnavailable
from fulfiller.retry import parse_retry_after

SCOPE = "https://www.googleapis.com/auth/drive.readonly"
# Full access, asked for only when a catalog copies masters past the download quota (drive_copies).
WRITE_SCOPE = "https://www.googleapis.com/auth/drive"
DEFAULT_ENDPOINT = "https://www.googleapis.com/drive/v3/"
FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
GOOGLE_NATIVE = "application/vnd.google-apps."
_RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
# 403 reasons that no retry fixes, explained for the operator who reads the job's error.
_DOWNLOAD_DENIED = {
    "downloadQuotaExceeded": "the file's download quota is exhausted; try later or copy it",
    "cannotDownloadFile": "Drive refuses to serve this file (downloading is disabled for it); "
    "ask its owner to allow downloads or copy it",
    "cannotDownloadAbusiveFile": "Drive flagged this file as malware or abuse and will not serve it; "
    "replace the master",
}
# Connections kept per host: every job of a process may be downloading at once.
_MAX_DOWNLOADS = 32


class NotFound(Exception):
    """Drive answered 404."""


class QuotaExceeded(CatalogError):
    """The file's download quota is spent (downloadQuotaExceeded): a copy of it would download."""


class Folder(NamedTuple):
    """A Drive folder, as listings need it."""

    id: str
    drive_id: str | None  # set for Shared Drive folders: listings then ask that drive's corpus


def quote(value: str) -> str:
    """A string literal for a Drive ``q`` query: backslashes and single quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_folder(item: dict[str, Any]) -> bool:
    """A listed item that is a folder, or a shortcut to one (walks follow those as folders)."""
    return FOLDER in (item.get("mimeType"), item.get("shortcutDetails", {}).get("targetMimeType"))


def load_credentials(credentials_file: str, *, write: bool = False) -> Credentials:
    """A service account's key file, else application default credentials; read-only unless ``write``.

    Only the service-account type is read from ``credentials_file``: a generic
    loader would also accept external-account configs that make google-auth
    run commands or fetch URLs named in the file.
    """
    scopes = [WRITE_SCOPE if write else SCOPE]
    try:
        if credentials_file:
            return service_account.Credentials.from_service_account_file(credentials_file, scopes=scopes)
        credentials, _ = google.auth.default(scopes=scopes)
    except (DefaultCredentialsError, OSError, ValueError, KeyError) as exc:
        raise CatalogError(f"drive: no usable credentials: {exc!r}") from None
    return credentials


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
        return NotFound(f"drive: {what}: not found")
    if status in (408, 429) or status >= 500 or (status == 403 and reason in _RATE_LIMIT_REASONS):
        return CatalogUnavailable(
            f"drive: {what}: HTTP {status} {reason}".rstrip(), retry_after=parse_retry_after(retry_after)
        )
    if status == 403 and reason in _DOWNLOAD_DENIED:
        denied = QuotaExceeded if reason == "downloadQuotaExceeded" else CatalogError
        return denied(f"drive: {reason}: {_DOWNLOAD_DENIED[reason]} ({what})")
    if status == 401:
        return CatalogError(f"drive: {what}: credentials rejected even after a token refresh (HTTP 401): {message}")
    return CatalogError(f"drive: {what}: HTTP {status} {reason}: {message}")


def _auth_failure(exc: RefreshError | TransportError, what: str) -> Exception:
    """A token that could not be obtained: transient when google-auth says so."""
    if isinstance(exc, TransportError) or exc.retryable:
        return CatalogUnavailable(f"drive: {what}: cannot reach the token endpoint: {exc}")
    return CatalogError(f"drive: {what}: cannot obtain an access token: {exc}")


def _list_scope(folder: Folder) -> dict[str, Any]:
    """List parameters that make Shared Drive items visible (they are silently missing otherwise)."""
    scope: dict[str, Any] = {"supportsAllDrives": True, "includeItemsFromAllDrives": True}
    if folder.drive_id:
        scope.update(corpora="drive", driveId=folder.drive_id)
    return scope


class DriveApi:
    """One Drive v3 endpoint reached with one set of credentials; safe to call from concurrent tasks."""

    def __init__(self, credentials: Credentials, *, api_endpoint: str | None = None, timeout_s: float = 60.0):
        endpoint = (api_endpoint or DEFAULT_ENDPOINT).rstrip("/") + "/"
        if not endpoint.endswith("/drive/v3/"):
            raise CatalogError(f"drive: api_endpoint must end in /drive/v3/ (got {endpoint!r})")
        self._endpoint = endpoint
        self._credentials = credentials
        self._timeout_s = timeout_s
        self._service = build(
            "drive",
            "v3",
            credentials=credentials,
            client_options={"api_endpoint": endpoint},
            static_discovery=True,
            cache_discovery=False,
        )
        self._local = threading.local()  # httplib2 is not thread-safe: one authorised Http per worker thread
        self._pool = BulkHttp(timeout_s, _MAX_DOWNLOADS, redirects=5)
        self._auth_lock = threading.Lock()  # one token refresh at a time, whichever thread downloads

    @property
    def principal(self) -> str:
        """Whom Drive sees: the service account's address, when the credentials have one."""
        return getattr(self._credentials, "service_account_email", None) or "these credentials"

    # -- metadata ------------------------------------------------------------------------

    async def get(self, file_id: str, fields: str) -> dict[str, Any]:
        """The file resource's ``fields``; NotFound when Drive has no such file (or hides it)."""
        return await self._execute(
            partial(self._service.files().get, fileId=file_id, fields=fields, supportsAllDrives=True),
            f"get {file_id}",
        )

    async def list_page(
        self, q: str, folder: Folder, fields: str, *, page_size: int, token: str | None = None, what: str = "list"
    ) -> dict[str, Any]:
        """One page of the items matching ``q`` in ``folder``'s drive: ``files`` and ``nextPageToken``."""
        return await self._execute(
            partial(
                self._service.files().list,
                q=q,
                fields=f"nextPageToken,files({fields})",
                pageSize=page_size,
                pageToken=token,
                **_list_scope(folder),
            ),
            what,
        )

    async def list(self, q: str, folder: Folder, fields: str) -> list[dict[str, Any]]:
        """Every item matching ``q`` in ``folder``'s drive, across pages."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self.list_page(q, folder, fields, page_size=1000, token=token)
            items.extend(page.get("files", []))
            token = page.get("nextPageToken")
            if not token:
                return items

    def _thread_http(self) -> google_auth_httplib2.AuthorizedHttp:
        http = getattr(self._local, "http", None)
        if http is None:
            # max_refresh_attempts=1: a 401 refreshes the token once, then the request is repeated once.
            http = google_auth_httplib2.AuthorizedHttp(
                self._credentials, http=httplib2.Http(timeout=self._timeout_s), max_refresh_attempts=1
            )
            self._local.http = http
        return http

    async def _execute(self, make: Callable[[], HttpRequest], what: str) -> dict[str, Any]:
        """Run a metadata request once, in a worker thread, its failures turned into catalog errors."""
        return await asyncio.to_thread(self._call, make, what)

    def _call(self, make: Callable[[], HttpRequest], what: str) -> Any:
        """``_execute``, blocking: for the thread a download runs on."""
        try:
            return make().execute(http=self._thread_http())
        except HttpError as exc:
            raise _failure(exc.status_code, exc.content, exc.resp.get("retry-after"), what) from exc
        except (RefreshError, TransportError) as exc:
            raise _auth_failure(exc, what) from exc
        except (httplib2.HttpLib2Error, OSError) as exc:
            raise CatalogUnavailable(f"drive: {what}: {exc!r}") from exc

    def copy(self, file_id: str, folder_id: str, name: str) -> str:
        """files.copy into ``folder_id`` under ``name``: the copy's id. Blocking (see ``drive_copies``)."""
        made = self._call(partial(self._service.files().copy, fileId=file_id, fields="id", supportsAllDrives=True,
                                  body={"name": name, "parents": [folder_id]}), f"copy {file_id}")
        return str(made["id"])

    def delete(self, file_id: str) -> None:
        """files.delete (not to the trash: a copy made for one download). Blocking."""
        self._call(partial(self._service.files().delete, fileId=file_id, supportsAllDrives=True),
                   f"delete {file_id}")

    # -- media ---------------------------------------------------------------------------

    def _auth_headers(self, rejected: str | None = None) -> dict[str, str]:
        """Authorization for a download; refreshes when stale or when ``rejected`` was refused. Blocking."""
        with self._auth_lock:
            creds = self._credentials
            if not creds.valid or (rejected is not None and creds.token == rejected):
                request = google_auth_httplib2.Request(httplib2.Http(timeout=self._timeout_s))
                try:
                    creds.refresh(request)
                except (RefreshError, TransportError) as exc:
                    raise _auth_failure(exc, "download") from exc
            headers: dict[str, str] = {}
            creds.apply(headers)
            return headers

    def open_media(self, file_id: str, start: int, what: str, end: int | None = None) -> urllib3.HTTPResponse:
        """One GET of the file's bytes from ``start`` on (to ``end`` included, when given): an open response
        (200, or 206 when ranged).

        Blocking: called from a worker thread, or from the thread reading a
        download when it resumes. The caller reads the response and hands it to
        ``fulfiller.bulkhttp.release``.
        """
        url = f"{self._endpoint}files/{file_id}?alt=media&supportsAllDrives=true"
        # identity: byte offsets, Range and the md5 all refer to the stored bytes, never to a compressed form.
        extra = {"Accept-Encoding": "identity"}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end}"

        def get(headers: dict[str, str]) -> urllib3.HTTPResponse:
            return self._pool.request(
                "GET", url, headers={**headers, **extra}, preload_content=False, decode_content=False
            )

        headers = self._auth_headers()
        try:
            response = get(headers)
            if response.status == 401:
                release(response)
                response = get(self._auth_headers(rejected=headers.get("authorization", "").removeprefix("Bearer ")))
            if response.status == 206 or (response.status == 200 and "Range" not in extra):
                return response
            # never pull a whole file here
            body = b"" if response.status == 200 else response.read(decode_content=False)
            release(response)
        except urllib3.exceptions.HTTPError as exc:
            raise CatalogUnavailable(f"drive: {what}: {exc!r}") from exc
        if response.status == 200:
            raise CatalogError(f"drive: {self._endpoint} ignored a Range request; a proxy in the way must pass Range")
        raise _failure(response.status, body, response.headers.get("retry-after"), what)

    async def aclose(self) -> None:
        """Close the download connections."""
        self._pool.clear()
