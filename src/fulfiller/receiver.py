"""The webhook endpoint: verify, store durably, then ack.

The order is the contract. Nothing is answered 2xx before the event (and its
job) are committed; a duplicate event id is answered 200 without storing
anything new; a store that cannot commit answers 503 so Outpost retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from fulfiller.config import ReceiverConfig
from fulfiller.intake import plan
from fulfiller.metrics import Metrics
from fulfiller.signing import SignatureError, Verifier
from fulfiller.store.base import Store, StoreUnavailable

log = logging.getLogger("fulfiller.receiver")


class BodyTooLarge(Exception):
    pass


class Receiver:
    """An ASGI-ready request handler bound to one receiver config and store."""

    def __init__(self, cfg: ReceiverConfig, store: Store, metrics: Metrics):
        self.cfg = cfg
        self.store = store
        self.metrics = metrics
        self.prefix = cfg.prefix
        self.verifier = Verifier(cfg.mode, cfg.secrets, self.prefix, cfg.timestamp_tolerance_s)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        topic = request.headers.get(f"{self.prefix}topic", "")
        response, outcome, event_id = await self._handle(request, topic)
        self.metrics.deliveries.labels(topic or "unknown", outcome).inc()
        self.metrics.ack_latency.observe(time.perf_counter() - started)
        level = logging.INFO if response.status_code < 400 else logging.WARNING
        log.log(level, "delivery %s", outcome, extra={"event_id": event_id, "topic": topic or None,
                                                       "outcome": outcome, "http_status": response.status_code})
        return response

    async def _handle(self, request: Request, topic: str) -> tuple[JSONResponse, str, str | None]:
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            return _error(413, f"body over {self.cfg.max_body_bytes} bytes"), "too_large", None
        except ClientDisconnect:
            return _error(400, "client disconnected"), "bad_body", None
        try:
            header_id = self.verifier.verify(body, request.headers)
        except SignatureError as exc:
            return _error(401, f"signature refused: {exc}"), "bad_signature", None
        event_id = header_id or "sha256:" + hashlib.sha256(body).hexdigest()
        text, data = _parse_object(body)
        if data is None:
            return _error(400, "body is not a JSON object"), "bad_body", event_id
        try:
            stored = await self.store.ingest(plan(event_id, topic, text, data, time.time()))
        except Exception as exc:
            # Nothing is acked that is not committed: 503, and the sender retries. Anything but
            # StoreUnavailable is a bug, so it is logged with its traceback.
            log.error("store cannot commit: %s", exc, exc_info=not isinstance(exc, StoreUnavailable),
                      extra={"event_id": event_id})
            return _error(503, "store unavailable; retry later"), "store_unavailable", event_id
        if not stored:
            return JSONResponse({"status": "duplicate", "event_id": event_id}, 200), "duplicate", event_id
        return JSONResponse({"status": "accepted", "event_id": event_id}, 202), "accepted", event_id


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which no JSON writer can write back
        raise ValueError("number out of range")
    return value


def _parse_object(body: bytes) -> tuple[str, dict | None]:
    """The body as text and as a JSON object, or ``("", None)`` when it is not one.

    Strict where Python's json module is lenient, so that whatever is acked can
    be stored and shown again: UTF-8 only (``json.loads`` on bytes would also
    guess UTF-16/32), no NaN/Infinity, no number that overflows to infinity, no
    lone surrogate from a ``\\udXXX`` escape (it cannot be encoded as UTF-8),
    and nesting deep enough to exhaust the recursion limit is refused, not a 500.
    """
    try:
        text = body.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        if isinstance(data, dict) and "\\u" in text:
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        return "", None
    return text, data if isinstance(data, dict) else None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status)
