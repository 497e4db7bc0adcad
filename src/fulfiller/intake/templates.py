"""The Go-template subset of Outpost's two signing templates: parsed once, rendered, and read backwards.

Outpost builds the signed content (``DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE``)
and the signature header's value (``..._SIGNATURE_HEADER_TEMPLATE``) with Go's
text/template. The receiver supports the parts Outpost's documentation uses:

- content: ``.Body``, ``.EventID``, ``.Topic``, ``.Timestamp.Unix``,
  ``.Timestamp.UnixMilli``, ``.Timestamp.Format "<RFC 3339 layout>"``;
- header: ``.Signatures | join "<sep>"``, ``index .Signatures N``,
  ``.Timestamp.Unix``, ``.Timestamp.UnixMilli``, ``.EventID``, ``.Topic``;

with literal text around them. Anything else is a ``TemplateError`` naming the
part, raised when the configuration is loaded, never on a delivery. The header
template is also a pattern: ``HeaderTemplate.read`` takes a received value apart
into the signatures and fields it places. The content is rendered as bytes
around the raw body, which is never decoded or re-serialised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "DEFAULT_CONTENT",
    "DEFAULT_HEADER",
    "ContentTemplate",
    "HeaderFields",
    "HeaderTemplate",
    "Moment",
    "TemplateError",
]

DEFAULT_CONTENT = "{{.Body}}"
DEFAULT_HEADER = 'v0={{.Signatures | join ","}}'
RFC3339_LAYOUT = "2006-01-02T15:04:05Z07:00"  # Go's time.RFC3339

BODY, EVENT_ID, TOPIC = "Body", "EventID", "Topic"
UNIX, UNIX_MILLI, RFC3339 = "Timestamp.Unix", "Timestamp.UnixMilli", "Timestamp.RFC3339"
JOINED, INDEXED = "Signatures", "Signature"
TIMESTAMPS = frozenset({UNIX, UNIX_MILLI, RFC3339})

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_STRING = r'("(?:[^"\\]|\\.)*"|`[^`]*`)'
_FIELD = re.compile(r"\.(Body|EventID|Topic|Timestamp\.Unix|Timestamp\.UnixMilli)")
_FORMAT = re.compile(r"\.Timestamp\.Format\s+" + _STRING)
_JOIN = re.compile(r"\.Signatures\s*\|\s*join\s+" + _STRING)
_INDEX = re.compile(r"index\s+\.Signatures\s+([0-9]{1,2})")
_CONTENT_FIELDS = frozenset({BODY, EVENT_ID, TOPIC, UNIX, UNIX_MILLI, RFC3339})
_HEADER_FIELDS = frozenset({JOINED, INDEXED, EVENT_ID, TOPIC, UNIX, UNIX_MILLI})
_PUNCTUATION = frozenset(",;=:&|")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TemplateError(ValueError):
    """A template the receiver cannot use; the message names the part (safe to show: templates hold no secret)."""


@dataclass(frozen=True)
class Part:
    """Literal text (``field`` None), or a field; ``text`` is a join's separator, ``index`` an indexed signature."""

    field: str | None
    text: str = ""
    index: int = 0


def _go_string(literal: str) -> str:
    if literal.startswith("`"):
        return literal[1:-1]
    return json.loads(literal)  # Go's common escapes (\n, \t, \", \\, \u) are JSON's


def _action(source: str) -> Part | None:
    """One ``{{...}}`` action as a Part, or None when it is not in the subset."""
    inner = source.strip()
    if m := _FIELD.fullmatch(inner):
        return Part(m.group(1))
    try:
        if (m := _FORMAT.fullmatch(inner)) and _go_string(m.group(1)) == RFC3339_LAYOUT:
            return Part(RFC3339)
        if (m := _JOIN.fullmatch(inner)) and (sep := _go_string(m.group(1))):
            return Part(JOINED, text=sep)
    except ValueError:  # a string literal JSON cannot read
        return None
    if m := _INDEX.fullmatch(inner):
        return Part(INDEXED, index=int(m.group(1)))
    return None


def parse(source: str, allowed: frozenset[str]) -> tuple[Part, ...]:
    """The template's parts; TemplateError naming the first part outside ``allowed`` or the subset."""
    if not source:
        raise TemplateError("must not be empty")
    parts: list[Part] = []
    pos = 0
    for m in _ACTION.finditer(source):
        parts.extend(_literal(source[pos:m.start()]))
        part = _action(m.group(1))
        if part is None or part.field not in allowed:
            raise TemplateError(f'unsupported template part "{m.group(0)}"')
        parts.append(part)
        pos = m.end()
    parts.extend(_literal(source[pos:]))
    return tuple(parts)


def _literal(text: str) -> list[Part]:
    for marker in ("{{", "}}"):
        if marker in text:
            raise TemplateError(f'unsupported template part "{text[text.index(marker):][:40]}"')
    return [Part(None, text)] if text else []


@dataclass(frozen=True)
class Moment:
    """A delivery's timestamp, as the templates render it: milliseconds, and the UTC offset it was written with."""

    unix_ms: int
    offset_s: int = 0

    @property
    def unix(self) -> int:
        return self.unix_ms // 1000

    def rfc3339(self) -> str:
        """As Go's ``Format(time.RFC3339)`` writes it: whole seconds, ``Z`` for UTC."""
        zone = timezone(timedelta(seconds=self.offset_s))
        text = datetime.fromtimestamp(self.unix, zone).isoformat()
        return text.removesuffix("+00:00") + "Z" if self.offset_s == 0 else text

    @classmethod
    def from_header(cls, value: str) -> Moment:
        """A timestamp header: RFC 3339 (no offset = UTC), or unix seconds; ValueError otherwise."""
        value = value.strip()
        if value.isascii() and value.isdigit() and len(value) <= 12:
            return cls(int(value) * 1000)
        if not value.isascii() or "T" not in value.upper():
            raise ValueError("not an RFC 3339 timestamp")
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        offset = when.utcoffset()
        return cls((when - _EPOCH) // timedelta(milliseconds=1), int(offset.total_seconds()) if offset else 0)


def _text(value: str | None) -> bytes:
    """A header's value as the bytes it arrived as (headers are read as Latin-1)."""
    if value is None:
        return b""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


class ContentTemplate:
    """``signature_content_template``: the bytes each secret's HMAC is computed over."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts = parse(source, _CONTENT_FIELDS)
        self.fields = frozenset(p.field for p in self.parts if p.field)
        if BODY not in self.fields:
            raise TemplateError("signs no {{.Body}}: the body would not be authenticated")

    def render(self, body: bytes, *, event_id: str | None = None, topic: str | None = None,
               moment: Moment | None = None) -> bytes:
        out = []
        for part in self.parts:
            if part.field is None:
                out.append(part.text.encode("utf-8"))
            elif part.field == BODY:
                out.append(body)
            elif part.field in TIMESTAMPS:
                out.append(_timestamp(part.field, moment).encode("ascii"))
            else:
                out.append(_text(event_id if part.field == EVENT_ID else topic))
        return b"".join(out)


def _timestamp(field: str, moment: Moment | None) -> str:
    if moment is None:
        raise ValueError("a timestamp is needed")
    if field == UNIX:
        return str(moment.unix)
    return str(moment.unix_ms) if field == UNIX_MILLI else moment.rfc3339()


@dataclass(frozen=True)
class HeaderFields:
    """What a signature header's value holds, read back as its template places it."""

    signatures: list[str]
    moment: Moment | None = None
    event_id: str | None = None
    topic: str | None = None


_VALUE_PATTERN = {UNIX: r"([0-9]{1,12})", UNIX_MILLI: r"([0-9]{1,15})", EVENT_ID: r"(.+?)", TOPIC: r"(.+?)"}


def _literal_pattern(text: str) -> str:
    """Literal text as a pattern that, like the documented parsers, allows spaces around punctuation."""
    out = []
    for ch in text:
        if ch.isspace():
            out.append(r"\s+")
        elif ch in _PUNCTUATION:
            out.append(rf"\s*{re.escape(ch)}\s*")
        else:
            out.append(re.escape(ch))
    return "".join(out)


class HeaderTemplate:
    """``signature_header_template``: renders a header value, and reads one back (``read``).

    ``signature`` is the pattern of one encoded signature (its alphabet and exact length), so that the
    fields on either side of a signature list are found without guessing.
    """

    def __init__(self, source: str, signature: str) -> None:
        self.source = source
        self.parts = parse(source, _HEADER_FIELDS)
        self.fields = frozenset(p.field for p in self.parts if p.field)
        if not self.fields & {JOINED, INDEXED}:
            raise TemplateError("places no signature ({{.Signatures | join \",\"}} or {{index .Signatures 0}})")
        pattern = []
        for part in self.parts:
            if part.field is None:
                pattern.append(_literal_pattern(part.text))
            elif part.field == JOINED:
                pattern.append(f"({signature}(?:{_literal_pattern(part.text)}{signature})*)")
            elif part.field == INDEXED:
                pattern.append(f"({signature})")
            else:
                pattern.append(_VALUE_PATTERN[part.field])
        self._pattern = re.compile(r"\s*" + "".join(pattern) + r"\s*", re.IGNORECASE | re.DOTALL)
        self._fields = [p for p in self.parts if p.field is not None]

    def render(self, signatures: Sequence[str], *, event_id: str | None = None, topic: str | None = None,
               moment: Moment | None = None) -> str:
        out = []
        for part in self.parts:
            if part.field is None:
                out.append(part.text)
            elif part.field == JOINED:
                out.append(part.text.join(signatures))
            elif part.field == INDEXED:
                out.append(signatures[part.index] if part.index < len(signatures) else "")
            elif part.field in TIMESTAMPS:
                out.append(_timestamp(part.field, moment))
            else:
                out.append((event_id if part.field == EVENT_ID else topic) or "")
        return "".join(out)

    def read(self, value: str) -> HeaderFields | None:
        """The signatures and fields ``value`` holds; None when it does not have the template's shape
        (or places one field twice with two values)."""
        m = self._pattern.fullmatch(value)
        if m is None:
            return None
        signatures: list[str] = []
        found: dict[str, str] = {}
        for part, text in zip(self._fields, m.groups(), strict=True):
            if part.field == JOINED:
                signatures.extend(re.split(_literal_pattern(part.text), text.strip(), flags=re.IGNORECASE))
            elif part.field == INDEXED:
                signatures.append(text)
            elif found.setdefault(part.field, text) != text:
                return None
        moment = None
        if UNIX_MILLI in found:
            moment = Moment(int(found[UNIX_MILLI]))
            if UNIX in found and int(found[UNIX]) != moment.unix:
                return None
        elif UNIX in found:
            moment = Moment(int(found[UNIX]) * 1000)
        return HeaderFields(signatures, moment, found.get(EVENT_ID), found.get(TOPIC))

    def describe(self, placeholder: str) -> str:
        """The shape of a value, e.g. ``t=<unix>,v0=<hex>[,<hex>]``."""
        names = {UNIX: "<unix>", UNIX_MILLI: "<unix-ms>", EVENT_ID: "<event-id>", TOPIC: "<topic>"}
        out = []
        for part in self.parts:
            if part.field is None:
                out.append(part.text)
            elif part.field == JOINED:
                out.append(f"{placeholder}[{part.text}{placeholder}]")
            else:
                out.append(placeholder if part.field == INDEXED else names[part.field])
        return "".join(out)
