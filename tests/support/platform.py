"""A stand-in for the ad platform: its R2 upload endpoint and its wait-token callbacks.

It is strict where R2 (S3) is strict, so a fulfiller that would fail against
the real service fails here too:

- uploads go to URLs it pre-signs itself (``presign``) and are refused 403 when
  the signature is wrong or the URL has expired, 411 without a Content-Length,
  501 for a chunked body (S3 does not implement ``Transfer-Encoding``);
- a body is streamed to disk as it arrives (never held in memory), hashed on the
  way, and kept as the object only when it arrived whole;
- callbacks are recorded (raw JSON and parsed); a wait token completes once,
  later callbacks to it answer 409, as the platform documents; scripts and
  faults override the answers.

Knobs inject the failures that are hard to provoke on the real service (5xx,
403, a PUT that hangs or is cut, a slow reader, callback 409/410/500) and every
piece of state is read under one lock, with ``wait_for*`` methods that block on
a condition instead of sleeping:

    with run_platform(tmp_path) as platform:
        url = platform.presign("fb-external/p/HRT-1/v1/en/9x16.video")
        callback = platform.callback_url("waitpoint_abc")
        platform.fail_uploads(2, status=503)
        ...
        platform.wait_for_callbacks(1, token="waitpoint_abc", timeout=10)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from support.servers import serve_in_thread

AMZ_DATE = "%Y%m%dT%H%M%SZ"
# The longest a "hang" fault holds a request before giving up on its own.
MAX_HANG_S = 60.0


@dataclass(frozen=True)
class Upload:
    """One PUT that reached the upload endpoint, as the double saw it."""

    key: str
    started_at: float  # epoch seconds when the request arrived
    content_type: str | None
    content_length: int | None  # the header, as sent
    transfer_encoding: str | None
    status: int | None = None  # what the double answered; None while in flight, or when cut/disconnected
    outcome: str = "in_flight"  # stored | refused | fault | hung | cut | disconnected | in_flight
    received: int = 0  # body bytes read
    sha256: str | None = None  # hex, for stored bodies
    ended_at: float | None = None
    reason: str | None = None  # why it was refused


@dataclass(frozen=True)
class StoredObject:
    """The last whole body stored under a key."""

    key: str
    path: Path
    size: int
    sha256: str
    content_type: str | None

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


@dataclass(frozen=True)
class Callback:
    """One POST to a completion callback."""

    token: str
    at: float
    raw: bytes
    body: Any  # parsed JSON, or None when the body was not JSON
    content_type: str | None
    status: int  # what the double answered


@dataclass
class _Fault:
    action: str  # "status" | "hang" | "cut" (uploads); "status" | "slow" (callbacks)
    times: int
    status: int = 503
    match: str | None = None  # key (uploads) or token (callbacks); None: any
    retry_after: str | None = None
    body: str = ""
    delay_s: float = 0.0


class PlatformDouble:
    """State and knobs of the stand-in; served by :func:`run_platform`."""

    def __init__(self, root: Path, *, secret: bytes | None = None, default_callback_status: int = 202):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret = secret or secrets.token_bytes(32)
        self.default_callback_status = default_callback_status
        self.base_url = ""  # set when served
        # Re-entrant, so a wait_for predicate may use the public readers while the lock is held.
        self._cond = threading.Condition(threading.RLock())
        self._uploads: list[Upload] = []
        self._objects: dict[str, StoredObject] = {}
        self._in_flight: dict[int, int] = {}  # upload index -> bytes received so far
        self._callbacks: list[Callback] = []
        self._counts: Counter[str] = Counter()
        self._upload_faults: list[_Fault] = []
        self._callback_faults: list[_Fault] = []
        self._callback_scripts: dict[str, list[int]] = {}
        self._completed_tokens: set[str] = set()
        self._slow_bytes_per_s: float | None = None
        self._callback_delay_s = 0.0
        self._release = threading.Event()
        self._closing = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/r2/{key:path}", _AsgiEndpoint(self._upload), methods=["PUT"]),
                Route("/callbacks/tokens/{token}/complete", self._callback, methods=["POST"]),
            ]
        )

    # -- URLs ------------------------------------------------------------------------

    def presign(self, key: str, expires_in: int = 3600, *, issued_at: float | None = None) -> str:
        """A pre-signed PUT URL for ``key``, valid ``expires_in`` seconds from ``issued_at`` (now)."""
        date = datetime.fromtimestamp(issued_at if issued_at is not None else time.time(), UTC).strftime(AMZ_DATE)
        credential = f"AKIDPLATFORMDOUBLE/{date[:8]}/auto/s3/aws4_request"
        signature = self._sign(key, date, str(expires_in), credential)
        query = (
            f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={quote(credential, safe='')}"
            f"&X-Amz-Date={date}&X-Amz-Expires={expires_in}&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={signature}"
        )
        return f"{self.base_url}/r2/{quote(key, safe='/')}?{query}"

    def callback_url(self, token: str) -> str:
        return f"{self.base_url}/callbacks/tokens/{token}/complete"

    def _sign(self, key: str, date: str, expires: str, credential: str) -> str:
        msg = "\n".join(("PUT", f"/r2/{key}", date, expires, credential)).encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def _check_signature(self, key: str, query: dict[str, list[str]]) -> str | None:
        """None when the query carries a valid, unexpired signature for ``key``; else why not."""
        try:
            date = query["X-Amz-Date"][0]
            expires = query["X-Amz-Expires"][0]
            credential = query["X-Amz-Credential"][0]
            signature = query["X-Amz-Signature"][0]
        except (KeyError, IndexError):
            return "AccessDenied: missing pre-signed query parameters"
        if not hmac.compare_digest(signature, self._sign(key, date, expires, credential)):
            return "SignatureDoesNotMatch"
        try:
            issued = datetime.strptime(date, AMZ_DATE).replace(tzinfo=UTC).timestamp()
            if time.time() > issued + int(expires):
                return "AccessDenied: Request has expired"
        except ValueError:
            return "AccessDenied: malformed X-Amz-Date or X-Amz-Expires"
        return None

    # -- knobs -----------------------------------------------------------------------

    def fail_uploads(self, times: int, status: int = 503, *, key: str | None = None,
                     retry_after: str | None = None, body: str = "") -> None:
        """The next ``times`` PUTs (to ``key``, or any) answer ``status`` after reading the body."""
        with self._cond:
            self._upload_faults.append(_Fault("status", times, status, key, retry_after, body))

    def hang_uploads(self, times: int = 1, *, key: str | None = None) -> None:
        """The next ``times`` PUTs are never answered (until ``release`` or the server stops)."""
        with self._cond:
            self._upload_faults.append(_Fault("hang", times, match=key))

    def cut_uploads(self, times: int = 1, *, key: str | None = None) -> None:
        """The next ``times`` PUTs read the body, start a 200 answer and drop the connection mid-way."""
        with self._cond:
            self._upload_faults.append(_Fault("cut", times, match=key))

    def slow_uploads(self, bytes_per_s: float | None) -> None:
        """Read upload bodies at about ``bytes_per_s`` (None: full speed). Applies to bodies in flight too."""
        with self._cond:
            self._slow_bytes_per_s = bytes_per_s

    def release(self) -> None:
        """Let every hanging PUT go (answered 503)."""
        self._release.set()

    def fail_callbacks(self, times: int, status: int = 500, *, token: str | None = None,
                       retry_after: str | None = None) -> None:
        """The next ``times`` callbacks (to ``token``, or any) answer ``status``."""
        with self._cond:
            self._callback_faults.append(_Fault("status", times, status, token, retry_after))

    def script_callbacks(self, token: str, statuses: list[int]) -> None:
        """Callbacks to ``token`` answer these statuses in order, then the default (202)."""
        with self._cond:
            self._callback_scripts[token] = list(statuses)

    def slow_callbacks(self, times: int, seconds: float, *, token: str | None = None) -> None:
        """The next ``times`` callbacks (to ``token``, or any) are handled at once but answered ``seconds`` late."""
        with self._cond:
            self._callback_faults.append(_Fault("slow", times, match=token, delay_s=seconds))

    def delay_callbacks(self, seconds: float) -> None:
        """Answer every callback ``seconds`` late (a slow platform)."""
        with self._cond:
            self._callback_delay_s = seconds

    def reset_faults(self) -> None:
        with self._cond:
            self._upload_faults.clear()
            self._callback_faults.clear()
            self._callback_scripts.clear()
            self._slow_bytes_per_s = None
            self._callback_delay_s = 0.0

    def _take_fault(self, faults: list[_Fault], match: str) -> _Fault | None:
        with self._cond:
            for fault in faults:
                if fault.times > 0 and fault.match in (None, match):
                    fault.times -= 1
                    return replace(fault)
        return None

    # -- state -----------------------------------------------------------------------

    def uploads(self, key: str | None = None) -> list[Upload]:
        with self._cond:
            return [u for u in self._uploads if key is None or u.key == key]

    def stored(self, key: str) -> StoredObject | None:
        with self._cond:
            return self._objects.get(key)

    def callbacks(self, token: str | None = None) -> list[Callback]:
        with self._cond:
            return [c for c in self._callbacks if token is None or c.token == token]

    def count(self, endpoint: str) -> int:
        """Requests that reached ``endpoint``: "upload" or "callback"."""
        with self._cond:
            return self._counts[endpoint]

    def received(self, key: str) -> int:
        """Bytes received so far by the PUT to ``key`` currently in flight (0 when none is)."""
        with self._cond:
            return max((n for i, n in self._in_flight.items() if self._uploads[i].key == key), default=0)

    def wait_for(self, predicate: Callable[[PlatformDouble], bool], timeout: float = 10.0,
                 what: str = "a condition") -> None:
        """Block until ``predicate(self)`` holds (it is re-checked on every change); AssertionError on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self), timeout)
        if not ok:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; uploads={self.uploads()!r} "
                f"callbacks={[(c.token, c.body, c.status) for c in self.callbacks()]!r}"
            )

    def wait_for_callbacks(self, n: int, *, token: str | None = None, timeout: float = 10.0) -> list[Callback]:
        self.wait_for(lambda s: len(s.callbacks(token)) >= n, timeout, f"{n} callback(s) to {token or 'any token'}")
        return self.callbacks(token)

    def wait_for_uploads(self, n: int, *, key: str | None = None, timeout: float = 10.0) -> list[Upload]:
        """Wait until ``n`` PUTs (to ``key``, or any) have been answered or have ended."""
        self.wait_for(lambda s: sum(1 for u in s.uploads(key) if u.outcome != "in_flight") >= n,
                      timeout, f"{n} finished upload(s) to {key or 'any key'}")
        return self.uploads(key)

    def wait_for_bytes(self, key: str, n: int, timeout: float = 10.0) -> None:
        """Wait until a PUT to ``key`` in flight has received at least ``n`` bytes."""
        self.wait_for(lambda s: s.received(key) >= n, timeout, f"{n} bytes of an upload to {key}")

    # -- bookkeeping -----------------------------------------------------------------

    def _record_upload(self, upload: Upload) -> int:
        with self._cond:
            self._counts["upload"] += 1
            self._uploads.append(upload)
            self._cond.notify_all()
            return len(self._uploads) - 1

    def _update_upload(self, index: int, **changes: Any) -> None:
        with self._cond:
            self._uploads[index] = replace(self._uploads[index], **changes)
            if self._uploads[index].outcome != "in_flight":
                self._in_flight.pop(index, None)
            self._cond.notify_all()

    def _progress(self, index: int, received: int) -> None:
        with self._cond:
            self._in_flight[index] = received
            self._cond.notify_all()

    # -- endpoints -------------------------------------------------------------------

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        key = request.path_params["key"]
        headers = request.headers
        length_header = headers.get("content-length")
        index = self._record_upload(Upload(
            key=key, started_at=time.time(), content_type=headers.get("content-type"),
            content_length=int(length_header) if length_header and length_header.isdigit() else None,
            transfer_encoding=headers.get("transfer-encoding"),
        ))

        async def refuse(status: int, code: str, message: str, outcome: str = "refused",
                         extra: dict[str, str] | None = None) -> None:
            received = await _drain(request)
            self._update_upload(index, status=status, outcome=outcome, received=received,
                                ended_at=time.time(), reason=code)
            xml = f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            await Response(xml, status, headers=extra, media_type="application/xml")(scope, receive, send)

        if "chunked" in (headers.get("transfer-encoding") or "").lower():
            return await refuse(501, "NotImplemented", "A header you provided implies functionality that is "
                                "not implemented (Transfer-Encoding)")
        if length_header is None:
            return await refuse(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        problem = self._check_signature(key, parse_qs(request.url.query))
        if problem is not None:
            code, _, message = problem.partition(": ")
            return await refuse(403, code, message or "The request signature we calculated does not match")

        fault = self._take_fault(self._upload_faults, key)
        if fault is not None and fault.action == "status":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return await refuse(fault.status, "InjectedFault", fault.body or "injected by the test", "fault", extra)
        if fault is not None and fault.action == "hang":
            self._update_upload(index, outcome="hung")
            deadline = time.monotonic() + MAX_HANG_S
            while not (self._release.is_set() or self._closing.is_set()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self._update_upload(index, ended_at=time.time())
            await Response("released", 503)(scope, receive, send)
            return

        expected = int(length_header)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".part-")
        tmp = Path(tmp_name)
        hasher = hashlib.sha256()
        received = 0
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.stream():
                    if not chunk:
                        continue
                    f.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    self._progress(index, received)
                    with self._cond:
                        rate = self._slow_bytes_per_s
                    if rate:
                        await asyncio.sleep(len(chunk) / rate)
        except ClientDisconnect:
            tmp.unlink(missing_ok=True)
            self._update_upload(index, outcome="disconnected", received=received, ended_at=time.time())
            return
        if received != expected:
            tmp.unlink(missing_ok=True)
            return await refuse(400, "IncompleteBody", f"got {received} of {expected} bytes")
        if fault is not None and fault.action == "cut":
            tmp.unlink(missing_ok=True)
            self._update_upload(index, outcome="cut", received=received, ended_at=time.time())
            # Start an answer, then return without finishing it: uvicorn drops the connection.
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
            return
        digest = hasher.hexdigest()
        final = self.root / f"object-{index}-{digest[:16]}"
        tmp.rename(final)
        with self._cond:
            self._objects[key] = StoredObject(key, final, received, digest, headers.get("content-type"))
        self._update_upload(index, status=200, outcome="stored", received=received, sha256=digest,
                            ended_at=time.time())
        await Response(b"", 200, headers={"ETag": f'"{digest[:32]}"'})(scope, receive, send)

    async def _callback(self, request: Request) -> Response:
        """Complete the wait token, as the platform does: once. A token already completed answers 409.

        The answer is decided (and the token completed) when the request arrives; a slow
        answer comes after that, so a client that gives up waiting has still completed it.
        """
        token = request.path_params["token"]
        with self._cond:
            self._counts["callback"] += 1
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers: dict[str, str] = {}
        delay = 0.0
        with self._cond:
            script = self._callback_scripts.get(token)
            status = script.pop(0) if script else None
            if status is None:
                fault = self._take_fault(self._callback_faults, token)
                if fault is not None and fault.action == "slow":
                    delay = fault.delay_s
                elif fault is not None:
                    status = fault.status
                    if fault.retry_after:
                        headers["Retry-After"] = fault.retry_after
            if status is None:
                status = 409 if token in self._completed_tokens else self.default_callback_status
            if 200 <= status < 300:
                self._completed_tokens.add(token)
            delay = delay or self._callback_delay_s
            self._callbacks.append(Callback(token, time.time(), raw, body, request.headers.get("content-type"), status))
            self._cond.notify_all()
        if delay:
            await asyncio.sleep(delay)
        answer = {200: "ok", 202: "accepted", 409: "already completed", 410: "expired"}.get(status, "error")
        return JSONResponse({"status": answer}, status, headers=headers)


class _AsgiEndpoint:
    """Marks a coroutine as a raw ASGI app for Starlette's Route (it needs ``send`` itself)."""

    def __init__(self, fn: Callable[[Scope, Receive, Send], Any]):
        self._fn = fn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._fn(scope, receive, send)


async def _drain(request: Request) -> int:
    """Read and discard the body, so the client sees the answer rather than a reset mid-send."""
    n = 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
    except ClientDisconnect:
        pass
    return n


PROJECT_ID = "019d928c-02e1-7000-8000-00000000abcd"
FAMILY_ASPECTS = {"feed": ["1x1", "3x4", "4x5"], "story_reel": ["9x16"]}


def storage_key(code: str, aspect_or_family: str, kind: str = "video", *, project_id: str = PROJECT_ID,
                variation: int = 1, locale: str = "en") -> str:
    """The platform's key layout: ``fb-external/{projectId}/{code}/v{N}/{locale}/{aspect-or-family}.{kind}``."""
    return f"fb-external/{project_id}/{code}/v{variation}/{locale}/{aspect_or_family}.{kind}"


def source_requested(code: str, *, upload_url: str, callback_url: str, kind: str = "video",
                     aspect: str | None = None, family: str | None = None, accepted: list[str] | None = None,
                     key: str | None = None, expires_at: float | None = None, variation: int = 1,
                     locale: str = "en", project_id: str = PROJECT_ID, slug: str = "hearty") -> dict[str, Any]:
    """A ``video.source_requested`` body shaped as the platform documents it: OSS with ``aspect``, AFS with ``family``."""
    if (aspect is None) == (family is None):
        raise ValueError("give exactly one of aspect (OSS) or family (AFS)")
    creative: dict[str, Any] = {"code": code, "variation": variation, "locale": locale}
    if aspect is not None:
        creative["aspectRatio"] = aspect
    else:
        creative["placementFamily"] = family
        creative["acceptedAspects"] = list(accepted if accepted is not None else FAMILY_ASPECTS[family or ""])
    creative["kind"] = kind
    expires = datetime.fromtimestamp(expires_at if expires_at is not None else time.time() + 3600, UTC)
    return {
        "projectId": project_id,
        "projectSlug": slug,
        "creative": creative,
        "facebook": {
            "facebookMediaIds": ["fm_a"],
            "ads": [{"id": "120244000819040432", "name": f"15-08-25 {code}", "adAccountId": "743795164364156"}],
            "adsets": [{"id": "120234224516300432", "name": "Broad - US - v2"}],
            "campaigns": [{"id": "120234224515520432", "name": "Prospecting"}],
        },
        "fulfillment": {
            "uploadUrl": upload_url,
            "storageKey": key or storage_key(code, aspect or family or "", kind, project_id=project_id,
                                             variation=variation, locale=locale),
            "expiresAt": expires.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "completeCallbackUrl": callback_url,
        },
    }


def completion(key: str, data: bytes, extension: str, aspect: str | None = None) -> dict[str, Any]:
    """The completion callback's body for ``data`` stored under ``key``; ``aspect``: an AFS request's choice."""
    body: dict[str, Any] = {"storageKey": key}
    if aspect is not None:
        body["aspectRatio"] = aspect
    body.update(extension=extension, contentHash="sha256:" + hashlib.sha256(data).hexdigest())
    return body


def new_token() -> str:
    """A fresh waitpoint token, as the platform mints one per request."""
    return f"waitpoint_{secrets.token_hex(8)}"


@contextmanager
def run_platform(root: Path, **kwargs: Any) -> Iterator[PlatformDouble]:
    """Serve a PlatformDouble on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    double = PlatformDouble(root, **kwargs)
    # Uvicorn's complaint about the answers the double cuts on purpose is dropped.
    with serve_in_thread(double.app, http="h11", lifespan="off", timeout_graceful_shutdown=1,
                         quiet="without completing response", name="platform-double") as base_url:
        double.base_url = base_url
        try:
            yield double
        finally:
            double._closing.set()  # held answers let go before the server stops


__all__ = [
    "Callback", "PlatformDouble", "StoredObject", "Upload", "completion", "new_token", "run_platform",
    "source_requested", "storage_key",
]
