"""A Google Drive v3 stand-in that the real google-api-python-client talks to.

It serves the slice of Drive the catalog uses (``files.list``, ``files.get``,
``alt=media`` downloads, and an OAuth token endpoint for a service account)
and is strict where Drive is strict, so a client bug that Drive would punish
fails here too: Shared-Drive items stay hidden unless the request opts in,
malformed ``q`` queries and field selections are 400s, listings page, tokens
expire. Knobs inject the failures that are hard to provoke on the real service.

    with run_drive_double() as drive:
        root = drive.add_folder("Masters")
        drive.add_file("9x16.mp4", root, data)
        drive.add_file("big.mkv", root, path=big_file)   # served from disk, streamed
        key_file = drive.write_service_account(tmp_path)
        ...  # DriveCatalog(..., api_endpoint=drive.api_endpoint)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from support.servers import serve_in_thread

FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
GOOGLE_DOC = "application/vnd.google-apps.document"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # google-auth's fixed ``aud``, whatever token_uri says
DRIVE_READONLY = "https://www.googleapis.com/auth/drive.readonly"
DRIVE = "https://www.googleapis.com/auth/drive"  # full access: what copying and deleting need
CLIENT_EMAIL = "fulfiller-test@drive-double.iam.gserviceaccount.com"

_FILE_FIELDS = frozenset(
    {
        "kind", "id", "name", "mimeType", "parents", "trashed", "size", "md5Checksum", "sha256Checksum",
        "modifiedTime", "driveId", "shortcutDetails", "videoMediaMetadata", "imageMediaMetadata",
    }
)  # fmt: skip
_LIST_FIELDS = frozenset({"kind", "nextPageToken", "incompleteSearch", "files"})
_DEFAULT_FILE_FIELDS = "kind,id,name,mimeType"
_DEFAULT_LIST_FIELDS = "kind,nextPageToken,incompleteSearch,files(kind,id,name,mimeType)"
_FILE_CHUNK = 1 << 20  # read size when serving a file from disk
_DOWNLOAD_MESSAGES = {
    "downloadQuotaExceeded": "The download quota for this file has been exceeded.",
    "cannotDownloadFile": "This file cannot be downloaded by the user.",
    "cannotDownloadAbusiveFile": "This file has been identified as malware or spam and cannot be downloaded.",
}


_NO_PERMISSION = "The user does not have sufficient permissions for this file."


class BadRequest(Exception):
    """A request Drive would answer 400."""


# -- q: the query subset the catalog uses -----------------------------------------------

_Q_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|=)|(?P<word>[A-Za-z]+))")


def _tokens(q: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while q[pos:].strip():
        m = _Q_TOKEN.match(q, pos)
        if not m:
            raise BadRequest(f"Invalid query at {q[pos:]!r}")
        kind = m.lastgroup or ""
        text = m.group(kind)
        if kind == "str":
            body = text[1:-1]
            if not re.fullmatch(r"(?:[^\\]|\\['\\])*", body):  # only \' and \\ are escapes
                raise BadRequest(f"Invalid escape in {text}")
            text = re.sub(r"\\(.)", r"\1", body)
        out.append((kind, text))
        pos = m.end()
    return out


def parse_q(q: str) -> Callable[[Item], bool]:
    """A predicate for ``q`` terms joined by ``and``: ``'<id>' in parents``, ``name``/``mimeType`` =/!=,
    ``trashed = true|false``. Anything else is a 400, as Drive answers malformed queries."""
    toks = _tokens(q)
    terms: list[Callable[[Item], bool]] = []
    i = 0

    def take(kind: str, text: str | None = None) -> str:
        nonlocal i
        if i >= len(toks) or toks[i][0] != kind or (text is not None and toks[i][1] != text):
            raise BadRequest(f"Invalid query {q!r}")
        i += 1
        return toks[i - 1][1]

    while True:
        if i < len(toks) and toks[i][0] == "str":
            parent = take("str")
            take("word", "in")
            take("word", "parents")
            terms.append(lambda item, p=parent: p in item.parents)
        else:
            name = take("word")
            op = take("op")
            if name in ("name", "mimeType"):
                value = take("str")
                attr = "name" if name == "name" else "mime_type"
                terms.append(lambda item, a=attr, v=value, eq=op == "=": (getattr(item, a) == v) == eq)
            elif name == "trashed":
                flag = take("word")
                if flag not in ("true", "false"):
                    raise BadRequest(f"Invalid query {q!r}")
                terms.append(lambda item, t=flag == "true", eq=op == "=": (item.trashed == t) == eq)
            else:
                raise BadRequest(f"Invalid query {q!r}")
        if i == len(toks):
            return lambda item: all(term(item) for term in terms)
        take("word", "and")


# -- fields: partial responses ----------------------------------------------------------

_FIELD_TOKEN = re.compile(r"[A-Za-z0-9_*]+|[(),]")


def parse_fields(spec: str) -> dict[str, Any]:
    """``a,b(c,d)`` -> ``{"a": None, "b": {"c": None, "d": None}}``; a malformed selection is a 400."""
    toks = _FIELD_TOKEN.findall(spec)
    if "".join(toks) != spec.replace(" ", ""):
        raise BadRequest(f"Invalid field selection {spec}")
    pos = 0

    def level() -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(toks):
            name = toks[pos]
            if name in "(),":
                raise BadRequest(f"Invalid field selection {spec}")
            pos += 1
            sub = None
            if pos < len(toks) and toks[pos] == "(":
                pos += 1
                sub = level()
                if pos >= len(toks) or toks[pos] != ")":
                    raise BadRequest(f"Invalid field selection {spec}")
                pos += 1
            out[name] = sub
            if pos < len(toks) and toks[pos] == ",":
                pos += 1
            elif pos < len(toks) and toks[pos] != ")":
                raise BadRequest(f"Invalid field selection {spec}")
            if pos < len(toks) and toks[pos] == ")":
                return out
        return out

    tree = level()
    if pos != len(toks) or not tree:
        raise BadRequest(f"Invalid field selection {spec}")
    return tree


def _check_fields(tree: dict[str, Any], allowed: frozenset[str]) -> None:
    for name, sub in tree.items():
        if name != "*" and name not in allowed:
            raise BadRequest(f"Invalid field selection {name}")
        if name == "files" and sub is not None:
            _check_fields(sub, _FILE_FIELDS)


def _select(value: Any, tree: dict[str, Any] | None) -> Any:
    if tree is None or "*" in tree:
        return value
    if isinstance(value, list):
        return [_select(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: _select(value[k], sub) for k, sub in tree.items() if k in value}
    return value


# -- the drive --------------------------------------------------------------------------


@dataclass
class Item:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    modified_time: str
    drive_id: str | None = None
    data: bytes | None = None
    trashed: bool = False
    target_id: str | None = None
    # Published in place of the true checksums: a wrong value, or None for "Drive lists none".
    checksum_overrides: dict[str, str | None] = field(default_factory=dict)
    path: Path | None = None  # content on disk, served in place of ``data`` (never read into memory)
    digests: tuple[int, str, str] | None = None  # size, md5, sha256 of ``path``, computed once
    ours: bool = False  # owned by the service account: it may write into it (a folder) or delete it

    @property
    def binary(self) -> bool:
        return self.data is not None or self.path is not None

    @property
    def size(self) -> int:
        if self.digests is not None:
            return self.digests[0]
        return len(self.data or b"")

    def resource(self, target: Item | None) -> dict[str, Any]:
        """The full Drive v3 file resource (size and checksums as strings, as Drive sends them)."""
        r: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": list(self.parents),
            "trashed": self.trashed,
            "modifiedTime": self.modified_time,
        }
        if self.drive_id:
            r["driveId"] = self.drive_id
        if self.data is not None:
            r["size"] = str(len(self.data))
            r["md5Checksum"] = hashlib.md5(self.data).hexdigest()
            r["sha256Checksum"] = hashlib.sha256(self.data).hexdigest()
        elif self.digests is not None:
            r["size"], r["md5Checksum"], r["sha256Checksum"] = str(self.digests[0]), *self.digests[1:]
        if self.binary:
            for key, value in self.checksum_overrides.items():
                if value is None:
                    r.pop(key, None)
                else:
                    r[key] = value
        if self.target_id:
            r["shortcutDetails"] = {"targetId": self.target_id, "targetMimeType": target.mime_type if target else ""}
        return r


@dataclass(frozen=True)
class Hit:
    """One request the double answered."""

    kind: str  # token | list | get | media | copy | delete
    status: int
    params: dict[str, str]
    range: str | None
    file_id: str | None = None  # for get and media


@dataclass
class _Fault:
    remaining: int
    status: int
    reason: str
    retry_after: float | None
    kind: str | None


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Drive's error body: ``{"error": {"code", "message", "errors": [{"reason", ...}]}}``."""
    domain = "usageLimits" if reason.lower().endswith("ratelimitexceeded") else "global"
    detail = {"domain": domain, "reason": reason, "message": message}
    body = {"error": {"code": status, "message": message, "errors": [detail]}}
    return JSONResponse(body, status_code=status, headers=headers)


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=400)


class _CutResponse(Response):
    """Announces the whole body's Content-Length, sends ``cut`` bytes, and ends: the server drops the connection."""

    def __init__(self, body: bytes, cut: int, **kwargs: Any):
        super().__init__(body, **kwargs)
        self.cut = cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: self.cut], "more_body": True})


class _FileResponse(Response):
    """Bytes ``start`` to ``start + length`` of a file, read and sent a chunk at a time.

    With ``cut``, only that many bytes go out before the response ends unfinished
    (the connection drops), as _CutResponse does for in-memory files.
    """

    def __init__(self, path: Path, start: int, length: int, cut: int | None = None, **kwargs: Any):
        headers = {**kwargs.pop("headers", {}), "content-length": str(length)}
        super().__init__(b"", headers=headers, **kwargs)
        self.path, self.start, self.length, self.cut = path, start, length, cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        left = self.length if self.cut is None else min(self.cut, self.length)
        offset = self.start
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while left > 0:
                chunk = os.pread(fd, min(_FILE_CHUNK, left), offset)
                if not chunk:
                    raise RuntimeError(f"{self.path} is shorter than when it was added")
                offset += len(chunk)
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            os.close(fd)
        if self.cut is None:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _file_digests(path: Path) -> tuple[int, str, str]:
    size, md5, sha256 = 0, hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_FILE_CHUNK * 8):
            size += len(block)
            md5.update(block)
            sha256.update(block)
    return size, md5.hexdigest(), sha256.hexdigest()


@cache
def _signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class DriveDouble:
    """State and fault knobs of the fake Drive; ``app`` is the Starlette app serving it."""

    def __init__(self, token_lifetime_s: float = 3600.0):
        self.token_lifetime_s = token_lifetime_s
        self.base_url = ""  # set once served
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route("/drive/v3/files", self._list, methods=["GET"]),
                Route("/drive/v3/files/{file_id}", self._get, methods=["GET"]),
                Route("/drive/v3/files/{file_id}", self._delete, methods=["DELETE"]),
                Route("/drive/v3/files/{file_id}/copy", self._copy, methods=["POST"]),
            ]
        )
        self.reset()

    def reset(self) -> None:
        """Forget every item, token, fault and count, so one served double can serve many tests."""
        self.items: dict[str, Item] = {}
        self.tokens: dict[str, float] = {}  # token -> expiry (epoch seconds)
        self.scopes: dict[str, set[str]] = {}  # token -> the scopes it was granted
        self.deleted: list[str] = []  # ids of the files deleted, in order
        self.counts: Counter[str] = Counter()  # per kind ("list") and per kind and status ("list 429")
        self.hits: list[Hit] = []
        self._ids = itertools.count(1)
        self._clock = datetime(2024, 1, 1, tzinfo=UTC)
        self._faults: list[_Fault] = []
        self._cuts: dict[str, list[int]] = {}  # file id -> [after_bytes, times]
        self._denied: dict[str, str] = {}  # file id -> 403 reason on download
        self._refusing = False
        self._ignoring_ranges = False
        self._triggers: list[list[Any]] = []  # [kind, requests still to answer, action]

    # -- addresses and credentials --

    @property
    def api_endpoint(self) -> str:
        return f"{self.base_url}/drive/v3/"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def service_account_info(self) -> dict[str, str]:
        pem = _signing_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return {
            "type": "service_account",
            "project_id": "drive-double",
            "private_key_id": "double-key-1",
            "private_key": pem.decode(),
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "token_uri": self.token_uri,
        }

    def write_service_account(self, directory: Path) -> Path:
        path = directory / "service-account.json"
        path.write_text(json.dumps(self.service_account_info()))
        return path

    # -- building the tree --

    def _add(self, name: str, mime_type: str, parent: str | None, modified_time: str | None = None, **kw: Any) -> str:
        item_id = f"f{next(self._ids):05d}"
        drive_id = self.items[parent].drive_id if parent else None
        if modified_time is None:
            self._clock += timedelta(seconds=1)
            modified_time = self._clock.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        parents = [parent] if parent else []
        self.items[item_id] = Item(item_id, name, mime_type, parents, modified_time, drive_id=drive_id, **kw)
        return item_id

    def add_shared_drive(self, name: str) -> str:
        """A Shared Drive; its id is also its root folder's id."""
        drive_id = f"0AD{next(self._ids):05d}"
        self.items[drive_id] = Item(drive_id, name, FOLDER, [], "2024-01-01T00:00:00.000Z", drive_id=drive_id)
        return drive_id

    def add_folder(self, name: str, parent: str | None = None, *, trashed: bool = False, ours: bool = False) -> str:
        """A folder; ``ours``: the service account owns it, so it may copy files into it."""
        return self._add(name, FOLDER, parent, trashed=trashed, ours=ours)

    def add_folders(self, path: str, parent: str) -> str:
        """``a/b/c`` under ``parent`` (reusing folders already there); the last folder's id."""
        for name in path.split("/"):
            existing = [
                i.id for i in self.items.values() if i.name == name and parent in i.parents and i.mime_type == FOLDER
            ]
            parent = existing[0] if existing else self.add_folder(name, parent)
        return parent

    def add_file(
        self,
        name: str,
        parent: str,
        data: bytes | None = None,
        *,
        path: Path | None = None,
        mime_type: str = "application/octet-stream",
        trashed: bool = False,
        modified_time: str | None = None,
    ) -> str:
        """A binary file, its bytes given as ``data`` or as a file at ``path``.

        A ``path`` is hashed once here and streamed from disk on each download, so a
        master of any size (the benchmark's gigabyte) never sits in the double's memory.
        """
        if (data is None) == (path is None):
            raise ValueError("give exactly one of data or path")
        content: dict[str, Any] = {"data": data} if path is None else {"path": path, "digests": _file_digests(path)}
        return self._add(name, mime_type, parent, modified_time, trashed=trashed, **content)

    def add_google_doc(self, name: str, parent: str) -> str:
        """A Google-native document: no size, no md5, not downloadable."""
        return self._add(name, GOOGLE_DOC, parent)

    def add_shortcut(self, name: str, parent: str, target_id: str) -> str:
        return self._add(name, SHORTCUT, parent, target_id=target_id)

    def trash(self, item_id: str) -> None:
        self.items[item_id].trashed = True

    def delete(self, item_id: str) -> None:
        """Delete for good, a folder with everything in it (as Drive does)."""
        del self.items[item_id]
        for child in [i.id for i in self.items.values() if item_id in i.parents]:
            self.delete(child)

    # -- fault knobs --

    def fail_next(
        self,
        count: int,
        status: int = 429,
        reason: str = "rateLimitExceeded",
        *,
        retry_after: float | None = None,
        kind: str | None = None,
    ) -> None:
        """The next ``count`` API requests (of ``kind``: list, get, media; None: any) answer this error."""
        with self._lock:
            self._faults.append(_Fault(count, status, reason, retry_after, kind))

    def cut_download(self, file_id: str, after_bytes: int, times: int = 1) -> None:
        """The next ``times`` downloads of the file announce their full length and drop after ``after_bytes``."""
        self._cuts[file_id] = [after_bytes, times]

    def deny_download(self, file_id: str, reason: str = "downloadQuotaExceeded") -> None:
        """Downloads of the file answer 403 with ``reason`` (downloadQuotaExceeded, cannotDownloadFile, ...)."""
        self._denied[file_id] = reason

    def corrupt_checksum(self, file_id: str, key: str = "md5Checksum") -> str:
        """Publish a wrong ``key`` (md5Checksum or sha256Checksum) for the file; returns it."""
        wrong = "0" * (32 if key == "md5Checksum" else 64)
        self.items[file_id].checksum_overrides[key] = wrong
        return wrong

    def omit_checksum(self, file_id: str, key: str = "sha256Checksum") -> None:
        """List the file without ``key``, as Drive does for files it has not computed one for."""
        self.items[file_id].checksum_overrides[key] = None

    def expire_tokens(self) -> None:
        """Every access token issued so far is refused from now on (401)."""
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    def ignore_ranges(self) -> None:
        """Answer every download 200 with the whole file, Range or not (as a careless proxy would)."""
        self._ignoring_ranges = True

    def refuse_all_tokens(self) -> None:
        """Every access token, issued or still to be, is refused (401): a disabled account's key still signs."""
        self._refusing = True

    def after(self, kind: str, count: int, action: Callable[[], None]) -> None:
        """Run ``action`` (a knob: ``expire_tokens``, ``deny_download``, ...) once ``count`` more requests of
        ``kind`` (token, list, get, media) have been answered, whatever their status.

        The action runs before the next request is served, so a fault can be placed
        exactly: ``after("media", 1, ...)`` lets the first download (a sniff of the
        head) through and changes what the following one meets.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._triggers.append([kind, count, action])

    def hits_of(self, kind: str) -> list[Hit]:
        return [h for h in self.hits if h.kind == kind]

    # -- endpoints --

    async def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        response = self._grant(form)
        self._record("token", request, response.status_code)
        return response

    def _grant(self, form: dict[str, str]) -> Response:
        if form.get("grant_type") != JWT_BEARER:
            return _oauth_error("unsupported_grant_type", f"grant_type must be {JWT_BEARER}")
        try:
            header, payload, signature = form["assertion"].split(".")
            _signing_key().public_key().verify(
                _b64decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            claims = json.loads(_b64decode(payload))
        except (KeyError, ValueError, InvalidSignature):
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        expired = claims.get("exp", 0) < time.time()
        if (claims.get("aud"), claims.get("iss")) != (GOOGLE_TOKEN_AUDIENCE, CLIENT_EMAIL) or expired:
            return _oauth_error("invalid_grant", "Invalid JWT claims.")
        scopes = set(str(claims.get("scope", "")).split())
        if not scopes & {DRIVE_READONLY, DRIVE}:
            return _oauth_error("invalid_scope", "neither drive.readonly nor drive was requested")
        token = f"ya29.double-{next(self._ids)}"
        self.tokens[token] = time.time() + self.token_lifetime_s
        self.scopes[token] = scopes
        return JSONResponse({"access_token": token, "expires_in": int(self.token_lifetime_s), "token_type": "Bearer"})

    async def _list(self, request: Request) -> Response:
        return self._api("list", request, lambda: self._list_files(request))

    async def _get(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if request.query_params.get("alt") == "media":
            return self._api("media", request, lambda: self._media(request, file_id))
        return self._api("get", request, lambda: self._get_file(request, file_id))

    async def _copy(self, request: Request) -> Response:
        body = await request.body()
        return self._api("copy", request, lambda: self._copy_file(request, request.path_params["file_id"], body))

    async def _delete(self, request: Request) -> Response:
        return self._api("delete", request, lambda: self._delete_file(request, request.path_params["file_id"]))

    def _api(self, kind: str, request: Request, handler: Callable[[], Response]) -> Response:
        response = self._unauthorized(request) or self._fault(kind)
        if response is None:
            try:
                response = handler()
            except BadRequest as exc:
                response = _error(400, "invalid", str(exc))
        self._record(kind, request, response.status_code)
        return response

    def _record(self, kind: str, request: Request, status: int) -> None:
        self.counts[kind] += 1
        self.counts[f"{kind} {status}"] += 1
        params, file_id = dict(request.query_params), request.path_params.get("file_id")
        self.hits.append(Hit(kind, status, params, request.headers.get("range"), file_id))
        due = []
        with self._lock:
            for trigger in self._triggers:
                if trigger[0] == kind and trigger[1] > 0:
                    trigger[1] -= 1
                    if trigger[1] == 0:
                        due.append(trigger[2])
        for action in due:
            action()

    def _unauthorized(self, request: Request) -> Response | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.tokens.get(token, 0.0) > time.time() and not self._refusing:
            return None
        response = _error(401, "authError", "Request had invalid authentication credentials.")
        response.headers["www-authenticate"] = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
        return response

    def _fault(self, kind: str) -> Response | None:
        with self._lock:
            fault = next((f for f in self._faults if f.remaining > 0 and f.kind in (None, kind)), None)
            if fault is None:
                return None
            fault.remaining -= 1
        headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
        return _error(fault.status, fault.reason, f"injected {fault.status} {fault.reason}", headers)

    @staticmethod
    def _flag(request: Request, name: str) -> bool:
        value = request.query_params.get(name, "false").lower()
        if value not in ("true", "false"):
            raise BadRequest(f"Invalid value for {name}: {value}")
        return value == "true"

    def _visible(self, request: Request, file_id: str) -> Item | None:
        """The item, unless it is missing or in a Shared Drive and the request did not say supportsAllDrives."""
        item = self.items.get(file_id)
        if item is None or (item.drive_id and not self._flag(request, "supportsAllDrives")):
            return None
        return item

    def _resource(self, item: Item) -> dict[str, Any]:
        return item.resource(self.items.get(item.target_id or ""))

    def _list_files(self, request: Request) -> Response:
        p = request.query_params
        all_drives = self._flag(request, "supportsAllDrives") and self._flag(request, "includeItemsFromAllDrives")
        corpora, drive_id = p.get("corpora", "user"), p.get("driveId")
        if corpora not in ("user", "drive", "allDrives", "domain"):
            raise BadRequest(f"Invalid value for corpora: {corpora}")
        if (corpora == "drive") != (drive_id is not None):
            raise BadRequest("The driveId parameter must be specified if and only if corpora is set to drive.")
        if drive_id is not None and not all_drives:
            raise BadRequest("driveId requires includeItemsFromAllDrives=true and supportsAllDrives=true")
        try:
            page_size = int(p.get("pageSize", "100"))
        except ValueError:
            raise BadRequest("Invalid value for pageSize") from None
        if not 1 <= page_size <= 1000:
            raise BadRequest(f"Invalid value for pageSize: {page_size} (1 to 1000)")
        q = p.get("q", "")
        matches = parse_q(q) if q else (lambda item: True)
        tree = parse_fields(p.get("fields", _DEFAULT_LIST_FIELDS))
        _check_fields(tree, _LIST_FIELDS)
        scope = {"q": q, "corpora": corpora, "driveId": drive_id}
        offset = 0
        if "pageToken" in p:
            try:
                token = json.loads(_b64decode(p["pageToken"]))
                offset = token.pop("offset")
            except (ValueError, KeyError, TypeError):
                raise BadRequest("Invalid pageToken") from None
            if token != scope:
                raise BadRequest("The pageToken does not match this query")
        found = [
            item
            for item in self.items.values()
            if (not item.drive_id or all_drives)
            and (corpora != "drive" or item.drive_id == drive_id)
            and matches(item)
        ]
        body: dict[str, Any] = {
            "kind": "drive#fileList",
            "incompleteSearch": False,
            "files": [self._resource(item) for item in found[offset : offset + page_size]],
        }
        if offset + page_size < len(found):
            token = json.dumps({**scope, "offset": offset + page_size}).encode()
            body["nextPageToken"] = base64.urlsafe_b64encode(token).decode().rstrip("=")
        return JSONResponse(_select(body, tree))

    def _get_file(self, request: Request, file_id: str) -> Response:
        tree = parse_fields(request.query_params.get("fields", _DEFAULT_FILE_FIELDS))
        _check_fields(tree, _FILE_FIELDS)
        item = self._visible(request, file_id)
        if item is None:
            return _error(404, "notFound", f"File not found: {file_id}.")
        return JSONResponse(_select(self._resource(item), tree))

    def _writing(self, request: Request) -> bool:
        """Whether the request's token may write (Drive's full scope; drive.readonly may not)."""
        return DRIVE in self.scopes.get(request.headers.get("authorization", "").removeprefix("Bearer "), ())

    def _copy_file(self, request: Request, file_id: str, body: bytes) -> Response:
        """files.copy: the copy belongs to the service account, in the one parent the body names."""
        if not self._writing(request):
            return _error(403, "insufficientPermissions", "Request had insufficient authentication scopes.")
        source = self._visible(request, file_id)
        if source is None or not source.binary:
            return _error(404, "notFound", f"File not found: {file_id}.")
        try:
            meta = json.loads(body or b"{}")
            [parent] = meta.get("parents") or [None]
        except (ValueError, TypeError):
            raise BadRequest("the body must be a file resource with one parent") from None
        folder = self._visible(request, parent) if parent else None
        if folder is None or folder.mime_type != FOLDER:
            return _error(404, "notFound", f"File not found: {parent}.")
        if not folder.ours:
            return _error(403, "insufficientFilePermissions", _NO_PERMISSION)
        copy_id = self._add(meta.get("name") or f"Copy of {source.name}", source.mime_type, folder.id, ours=True,
                            data=source.data, path=source.path, digests=source.digests)
        tree = parse_fields(request.query_params.get("fields", _DEFAULT_FILE_FIELDS))
        _check_fields(tree, _FILE_FIELDS)
        return JSONResponse(_select(self._resource(self.items[copy_id]), tree))

    def _delete_file(self, request: Request, file_id: str) -> Response:
        """files.delete: only what the service account owns, and only with the full scope."""
        item = self._visible(request, file_id)
        if item is None:
            return _error(404, "notFound", f"File not found: {file_id}.")
        if not self._writing(request) or not item.ours:
            return _error(403, "insufficientFilePermissions", _NO_PERMISSION)
        del self.items[file_id]
        self.deleted.append(file_id)
        return Response(status_code=204)

    def _media(self, request: Request, file_id: str) -> Response:
        item = self._visible(request, file_id)
        if item is None:
            return _error(404, "notFound", f"File not found: {file_id}.")
        if not item.binary:
            return _error(403, "fileNotDownloadable", "Only files with binary content can be downloaded.")
        if file_id in self._denied:
            reason = self._denied[file_id]
            return _error(403, reason, _DOWNLOAD_MESSAGES.get(reason, reason))
        size = item.size
        start, end, status, headers = 0, size - 1, 200, {"content-type": item.mime_type}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if m and not self._ignoring_ranges:  # an unparsable Range is ignored, as HTTP servers do
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size or end < start:
                return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
            headers["content-range"] = f"bytes {start}-{end}/{size}"
            status = 206
        length = end + 1 - start
        cut = self._cuts.get(file_id)
        cut_at = None
        if cut and cut[1] > 0 and cut[0] < length:
            cut[1] -= 1
            cut_at = cut[0]
        if item.path is not None:
            return _FileResponse(item.path, start, length, cut_at, status_code=status, headers=headers)
        data = (item.data or b"")[start : end + 1]
        if cut_at is not None:
            return _CutResponse(data, cut_at, status_code=status, headers=headers)
        return Response(data, status_code=status, headers=headers)


@contextmanager
def run_drive_double(double: DriveDouble | None = None) -> Iterator[DriveDouble]:
    """Serve a DriveDouble on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    double = double or DriveDouble()
    # Uvicorn's complaint about the connections the double cuts on purpose is dropped.
    with serve_in_thread(double.app, http="h11", lifespan="off", timeout_graceful_shutdown=1,
                         quiet="returned without completing response", name="drive-double") as base_url:
        double.base_url = base_url
        yield double
