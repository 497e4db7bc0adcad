"""The webhook endpoint: verify, store durably, then ack.

The order is the contract. Nothing is answered 2xx before the event (and its
job) are committed; a duplicate event id is answered 200 without storing
anything new; a store that cannot commit answers 503 so Outpost retries.

The endpoint is a plain ASGI app (Starlette still answers other methods on
the path 405): every delivery passes through here, and at intake rates the
Request and JSONResponse objects Starlette would build for each are a
measurable share of the event loop's time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from fulfiller.config import ReceiverConfig
from fulfiller.events import SOURCE_REQUESTED
from fulfiller.intake.admission import Delivery, NotAnObject, answer
from fulfiller.intake.refusal_log import RefusalLog
from fulfiller.intake.signing import SignatureError
from fulfiller.metrics import Metrics
from fulfiller.store.base import Store, StoreUnavailable

log = logging.getLogger("fulfiller.receiver")

# JSON as Starlette's JSONResponse writes it.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_CONTENT_TYPE = (b"content-type", b"application/json")

# Refusals kept for operators (the refusal log): the sender's mistakes, not ours (503) nor a sender
# that hung up before its body arrived.
_KEPT = frozenset({400, 401, 413})
_HUNG_UP = "client_disconnected"
# The longest event id stored: it is the events table's key, and an index row has a size limit.
MAX_EVENT_ID_BYTES = 255


@dataclass(slots=True)
class Answer:
    """A delivery's answer: status and JSON body, the outcome (metrics, logs), the topic it was taken under,
    the event id if known; for a refused delivery, the reason code its log line gives (finer than the outcome:
    which signature check failed), the body size and the body (for the doctor, then dropped)."""

    status: int
    reply: dict[str, str]
    outcome: str
    topic: str
    event_id: str | None = None
    reason: str | None = None
    body_bytes: int = 0
    body: bytes = b""


class BodyTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size  # declared, or read when the limit was passed


class ClientDisconnect(Exception):
    """The sender went away before its whole body arrived."""


class Receiver:
    """The ASGI app for the webhook route, bound to one receiver config and store."""

    def __init__(self, cfg: ReceiverConfig, store: Store, metrics: Metrics, refusals: RefusalLog | None = None):
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.refusals = refusals or RefusalLog(cfg)
        self.prefix = cfg.prefix
        self.verifier = cfg.verifier()
        self.topic_header = self.verifier.topic_header  # None: the sender names no topic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One delivery: answered only after _handle has the store's verdict; counted here, and logged and
        kept for operators here when refused (what the store took is logged where it was committed:
        Store.ingest)."""
        started = time.perf_counter()
        headers = _headers(scope)
        topic = headers.get(self.topic_header, "") if self.topic_header else ""
        got = await self._handle(headers, receive, topic)
        if got.reason is not None:
            await self._keep_refusal(scope, headers, got)
        self.metrics.delivery(got.topic, got.outcome, time.perf_counter() - started)
        body = _encode(got.reply).encode("utf-8")
        await send({"type": "http.response.start", "status": got.status,
                    "headers": [(b"content-length", str(len(body)).encode("latin-1")), _CONTENT_TYPE]})
        await send({"type": "http.response.body", "body": body})

    async def _keep_refusal(self, scope: Scope, headers: dict[str, str], got: Answer) -> None:
        client = scope.get("client")  # (host, port), or None over a Unix socket
        host = client[0] if client else None
        code = None
        if got.status in _KEPT and got.reason != _HUNG_UP:
            kept = await self.refusals.record(body=got.body, body_bytes=got.body_bytes, headers=headers,
                                              http_status=got.status, answered=got.reason or "", client=host,
                                              path=scope["path"])
            self.metrics.count_refused(kept.reason)
            code = kept.reason
        log.warning("delivery refused: %s", got.reason, extra={
            "event_id": got.event_id, "topic": got.topic or None, "outcome": got.outcome, "reason": got.reason,
            "code": code, "http_status": got.status, "client": host})

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(int(declared))
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _handle(self, headers: dict[str, str], receive: Receive, topic: str) -> Answer:
        try:
            body = await self._read_body(headers, receive)
        except BodyTooLarge as exc:
            return _refused(413, f"body over {self.cfg.max_body_bytes} bytes", "too_large", "too_large", topic,
                            body_bytes=exc.size)
        except ClientDisconnect:
            return _refused(400, "client disconnected", "bad_body", _HUNG_UP, topic)
        try:
            header_id = self.verifier.verify(body, headers)
        except SignatureError as exc:
            # The code only: which secret, template or clock it failed on is for operators (the doctor).
            return Answer(401, {"error": "signature refused", "reason": exc.code}, "bad_signature", topic,
                          reason=exc.code, body_bytes=len(body), body=body)
        if header_id is not None and len(header_id) > MAX_EVENT_ID_BYTES:  # headers are Latin-1: a byte a character
            return _refused(400, f"event id over {MAX_EVENT_ID_BYTES} bytes", "bad_event_id", "event_id_too_long",
                            topic, body_bytes=len(body))
        event_id = header_id or "sha256:" + hashlib.sha256(body).hexdigest()
        if self.topic_header is None and is_source_request(body):
            topic = SOURCE_REQUESTED
        try:
            stored = await self.store.ingest(Delivery(event_id, topic, body, time.time()))
        except NotAnObject as exc:
            return _refused(400, str(exc), "bad_body", "not_a_json_object", topic, event_id, body_bytes=len(body))
        except Exception as exc:
            # Nothing is acked that is not committed: 503, and the sender retries. Anything but
            # StoreUnavailable is a bug, so it is logged with its traceback.
            log.error("store cannot commit: %s", exc, exc_info=not isinstance(exc, StoreUnavailable),
                      extra={"event_id": event_id})
            return _refused(503, "store unavailable; retry later", "store_unavailable", "store_unavailable", topic,
                            event_id)
        status, outcome = answer(stored)
        return Answer(status, {"status": outcome, "event_id": event_id}, outcome, topic, event_id)


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by name; ASGI servers give names in lowercase, and the first of a repeated
    name wins, as with Starlette's ``Headers.get``."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(scope["headers"])}


def _refused(status: int, message: str, outcome: str, reason: str, topic: str, event_id: str | None = None, *,
             body_bytes: int = 0) -> Answer:
    return Answer(status, {"error": message}, outcome, topic, event_id, reason, body_bytes)


def is_source_request(body: bytes) -> bool:
    """Whether a body with no topic header is a ``video.source_requested`` request by its own shape: a JSON
    object with a ``creative`` object and a ``fulfillment`` object holding an ``uploadUrl`` (what only a
    request carries). The shape is signed; a topic header never is."""
    if b'"uploadUrl"' not in body:  # most bodies are told apart without parsing
        return False
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False  # the store refuses it with the reason
    fulfillment = data.get("fulfillment") if isinstance(data, dict) else None
    return (isinstance(data.get("creative"), dict) and isinstance(fulfillment, dict)
            and "uploadUrl" in fulfillment)
