"""Outpost's default signing mode as its operator configures it (``DESTINATIONS_WEBHOOK_*``).

Header names, algorithm, encoding and the two templates are the deployment's
own; an ``OutpostScheme`` is built from them once (a setting it cannot verify
with is a ``SchemeError`` naming the key) and then verifies, signs and
describes deliveries:

- the signature header is read back as its template places it: the signatures,
  and any timestamp, event id or topic it carries; a timestamp it does not
  carry comes from the timestamp header (RFC 3339 or unix);
- the content template is rendered around the raw body, each secret's HMAC is
  encoded, and all are compared in constant time against every signature read.

With both default templates the documented forms are read as Outpost documents
them: ``v0=<sig>[,<sig>]`` over the body, and ``t=<unix>,v0=<sig>[,<sig>]``
over ``b"<t>." + body`` (lenient on case and spaces, as senders and proxies vary).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fulfiller.intake.refusal import Refusal, SignatureError, any_matches, check_time, malformed, parse_unix
from fulfiller.intake.templates import (
    DEFAULT_CONTENT,
    DEFAULT_HEADER,
    EVENT_ID,
    TIMESTAMPS,
    TOPIC,
    ContentTemplate,
    HeaderTemplate,
    Moment,
    TemplateError,
)

__all__ = ["ALGORITHMS", "ENCODINGS", "Codec", "HeaderNames", "OutpostScheme", "SchemeError"]

ALGORITHMS = {"hmac-sha256": "sha256", "hmac-sha1": "sha1", "hmac-md5": "md5"}
ENCODINGS = ("hex", "base64")


class SchemeError(ValueError):
    """A signing setting the receiver cannot verify with; ``key`` is the receiver config key it is about."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Codec:
    """``signature_algorithm`` and ``signature_encoding``: how one secret's signature is computed and written."""

    algorithm: str = "hmac-sha256"
    encoding: str = "hex"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise SchemeError("signature_algorithm", f"unknown algorithm {self.algorithm!r} ({', '.join(ALGORITHMS)})")
        if self.encoding not in ENCODINGS:
            raise SchemeError("signature_encoding", f"unknown encoding {self.encoding!r} ({', '.join(ENCODINGS)})")

    def sign(self, key: bytes, content: bytes) -> str:
        digest = hmac.digest(key, content, ALGORITHMS[self.algorithm])  # one call into OpenSSL
        return digest.hex() if self.encoding == "hex" else base64.b64encode(digest).decode("ascii")

    @property
    def pattern(self) -> str:
        """One encoded signature: its alphabet and exact length (standard base64 with its padding)."""
        size = hashlib.new(ALGORITHMS[self.algorithm]).digest_size
        if self.encoding == "hex":
            return f"[0-9a-f]{{{2 * size}}}"
        pad = -size % 3
        return f"[A-Za-z0-9+/]{{{4 * ((size + 2) // 3) - pad}}}={{{pad}}}"

    def normal(self, signature: str) -> bytes:
        """What is compared: hex in lowercase (senders vary its case), base64 exactly as written."""
        return (signature.lower() if self.encoding == "hex" else signature).encode("ascii")

    @property
    def placeholder(self) -> str:
        return f"<{self.encoding}>"


@dataclass(frozen=True)
class HeaderNames:
    """The headers Outpost sends, by full lowercase name; None when it does not send one."""

    event_id: str | None
    topic: str | None
    timestamp: str | None
    signature: str

    @classmethod
    def resolve(cls, prefix: str, *, event_id: str | None = None, topic: str | None = None,
                timestamp: str | None = None, signature: str | None = None) -> HeaderNames:
        """As Outpost names them: unset (None) is ``{prefix}<key>``, a name pins it, ``""`` means not sent."""

        def name(given: str | None, key: str) -> str | None:
            value = f"{prefix}{key}" if given is None else given.strip()
            return value.lower() or None

        sig = name(signature, "signature")
        if sig is None:
            raise SchemeError("signature_header", "must not be empty: every delivery is verified by its signature")
        return cls(name(event_id, "event-id"), name(topic, "topic"), name(timestamp, "timestamp"), sig)


class OutpostScheme:
    """One deployment's Outpost signing settings, checked once; ``verify``, ``sign`` and ``describe`` use them."""

    def __init__(self, names: HeaderNames, codec: Codec | None = None, *, content_template: str = DEFAULT_CONTENT,
                 header_template: str = DEFAULT_HEADER, require_timestamp: bool = False) -> None:
        self.names = names
        self.codec = codec or Codec()
        try:
            self.content = ContentTemplate(content_template)
        except TemplateError as exc:
            raise SchemeError("signature_content_template", str(exc)) from None
        try:
            self.header = HeaderTemplate(header_template, self.codec.pattern)
        except TemplateError as exc:
            raise SchemeError("signature_header_template", str(exc)) from None
        # The documented forms, read as Outpost documents them (and as this receiver always has).
        self.documented = content_template == DEFAULT_CONTENT and header_template == DEFAULT_HEADER
        self.require_timestamp = require_timestamp
        self.signs_time = bool(self.content.fields & TIMESTAMPS)
        self._check_sources()
        if require_timestamp and not self.documented and not self.signs_time:
            raise SchemeError("require_timestamp", "the signature_content_template signs no timestamp")

    def _check_sources(self) -> None:
        """Every field the content signs must come from somewhere: the signature header or its own header."""
        for fields, header, what, key in (
            ({EVENT_ID}, self.names.event_id, "{{.EventID}}", "event_id_header"),
            ({TOPIC}, self.names.topic, "{{.Topic}}", "topic_header"),
            (TIMESTAMPS, self.names.timestamp, "a {{.Timestamp}}", "timestamp_header"),
        ):
            if self.content.fields & fields and not self.header.fields & fields and header is None:
                raise SchemeError("signature_content_template", f"signs {what}, which no header carries"
                                  f" (receiver.{key} is empty and the signature header template does not place it)")

    def verify(self, body: bytes, headers: Mapping[str, str], keys: Sequence[bytes], tolerance_s: int,
               now: float | None = None) -> str | None:
        """Raise ``SignatureError`` unless one of ``keys`` signed the request; return its event id, if sent."""
        value = headers.get(self.names.signature)
        if value is None:
            raise SignatureError("missing signature header", Refusal.NO_SIGNATURE_HEADER)
        if not value.strip():
            raise SignatureError("empty signature header", Refusal.NO_SIGNATURE_HEADER)
        event_id = self._header(headers, self.names.event_id)
        if self.documented:
            ts, candidates = self._read_documented(value)
            if ts is None and self.require_timestamp:
                raise SignatureError("missing timestamp", Refusal.MISSING_TIMESTAMP)
            content = body
            if ts is not None:
                check_time(ts, tolerance_s, now)
                content = f"{ts}.".encode("ascii") + body
        else:
            fields = self.header.read(value)
            if fields is None:
                raise malformed()
            event_id = fields.event_id or event_id
            topic = fields.topic if fields.topic is not None else self._header(headers, self.names.topic)
            moment = fields.moment
            if moment is None and self.signs_time:
                moment = self._timestamp_header(headers)
            if EVENT_ID in self.content.fields and not event_id:
                raise malformed("missing id header")
            if TOPIC in self.content.fields and topic is None:
                raise malformed("missing topic header")
            if moment is not None:
                check_time(moment.unix, tolerance_s, now)
            content = self.content.render(body, event_id=event_id, topic=topic, moment=moment)
            candidates = [self.codec.normal(s) for s in fields.signatures]
        expected = [self.codec.normal(self.codec.sign(k, content)) for k in keys]
        if not any_matches(candidates, expected):
            raise SignatureError("no signature matches", Refusal.BAD_SIGNATURE)
        return event_id or None

    @staticmethod
    def _header(headers: Mapping[str, str], name: str | None) -> str | None:
        return headers.get(name) if name else None

    def _timestamp_header(self, headers: Mapping[str, str]) -> Moment:
        raw = self._header(headers, self.names.timestamp)
        if raw is None or not raw.strip():
            raise SignatureError("missing timestamp header", Refusal.MISSING_TIMESTAMP)
        try:
            return Moment.from_header(raw)
        except ValueError:
            raise malformed("malformed timestamp header") from None

    def _read_documented(self, value: str) -> tuple[int | None, list[bytes]]:
        """Split ``[t=<unix>,]v0=<sig>[,<sig>...]`` into (timestamp, signatures as compared).

        Lenient on what senders and proxies vary (case of hex and keys, spaces around
        ``,`` and ``=``, ``t=`` position, a repeated ``v0=``); strict on everything
        else, so a garbled header is reported as malformed rather than as a mismatch.
        """
        shape = re.compile(self.codec.pattern, re.IGNORECASE)
        ts: int | None = None
        candidates: list[bytes] = []
        seen_v0 = False
        for raw in value.split(","):
            part = raw.strip()
            key, eq, val = part.partition("=")
            if eq and (key.strip().lower() in ("t", "v0")):
                key, part = key.strip().lower(), val.strip()
                if key == "t" and ts is None:
                    ts = parse_unix(part)
                    continue
                if key != "v0":
                    raise malformed()
                seen_v0 = True
            elif not seen_v0:  # a bare signature only continues a v0= list
                raise malformed()
            if not shape.fullmatch(part):
                raise malformed()
            candidates.append(self.codec.normal(part))
        if not candidates:
            raise malformed()
        return ts, candidates

    def sign(self, body: bytes, keys: Sequence[bytes], *, event_id: str, topic: str, timestamp: int,
             timestamped: bool = False) -> dict[str, str]:
        """The headers Outpost, configured so, sends with ``body`` (current key first). With the default
        templates, ``timestamped`` (or ``require_timestamp``) gives the documented ``t=`` form."""
        moment = Moment(timestamp * 1000)
        if self.documented and (timestamped or self.require_timestamp):
            content = f"{timestamp}.".encode("ascii") + body
            value = f"t={timestamp}," + self.header.render([self.codec.sign(k, content) for k in keys])
        else:
            content = self.content.render(body, event_id=event_id, topic=topic, moment=moment)
            value = self.header.render([self.codec.sign(k, content) for k in keys], event_id=event_id, topic=topic,
                                       moment=moment)
        sent = {self.names.event_id: event_id, self.names.topic: topic,
                self.names.timestamp: datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")}
        headers = {name: v for name, v in sent.items() if name}
        headers[self.names.signature] = value
        return headers

    def describe(self) -> list[str]:
        """The headers a delivery must carry, with their shape (no secret, no signature)."""
        shape = self.header.describe(self.codec.placeholder)
        if self.documented:
            return [f"{self.names.signature}: t=<unix>,{shape}" if self.require_timestamp
                    else f"{self.names.signature}: {shape} or t=<unix>,{shape}"]
        lines = [f"{self.names.signature}: {shape}"]
        for fields, name, what in ((TIMESTAMPS, self.names.timestamp, "<RFC 3339 or unix>"),
                                   ({EVENT_ID}, self.names.event_id, "<event-id>"),
                                   ({TOPIC}, self.names.topic, "<topic>")):
            if name and self.content.fields & fields and not self.header.fields & fields:
                lines.append(f"{name}: {what}")
        return lines
