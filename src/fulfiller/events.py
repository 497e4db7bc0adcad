"""The platform's events, checked against its documented shapes.

``video.source_requested`` becomes a :class:`SourceRequest` or an
:class:`InvalidPayload` naming the first broken field: a signed event of the
wrong shape is kept (and its job marked ``invalid``) because redelivering it
would never help. The shape includes bounds no sender may pass, so that no
field can exceed an index row, a slot or a deadline, nor hold what a database
column refuses. Lifecycle events become a :class:`Lifecycle` that says which
job they close and how.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fulfiller.hosts import UnsafeUrl, parse_target
from fulfiller.media import KINDS

SOURCE_REQUESTED = "video.source_requested"
SOURCE_FULFILLED = "video.source_fulfilled"
SOURCE_REJECTED = "video.source_rejected"
SOURCE_TIMEOUT = "video.source_timeout"
LIFECYCLE_STATUS = {SOURCE_FULFILLED: "fulfilled", SOURCE_REJECTED: "rejected", SOURCE_TIMEOUT: "timed_out"}
TOPICS = frozenset({SOURCE_REQUESTED, *LIFECYCLE_STATUS})

_ASPECT = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
MAX_INT = 2**63 - 1  # the widest integer a database column (SQLite INTEGER, PostgreSQL BIGINT) holds
# The most UTF-8 bytes a creative field, projectId, projectSlug or storageKey may hold: the store indexes
# some of them, and PostgreSQL refuses an index row over ~2.7 KB.
FIELD_BYTES = 1024
MAX_ACCEPTED_ASPECTS = 32  # each one is a catalog lookup, and is named in a skip reason
MAX_AHEAD_S = 24 * 3600  # how far past its receipt a request's expiresAt may be
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80


class InvalidPayload(ValueError):
    """The event's data breaks the platform's documented shape; the message says where."""


@dataclass(frozen=True)
class Coordinates:
    """Which creative bucket an event is about."""

    project_id: str
    code: str
    variation: int
    locale: str


@dataclass(frozen=True)
class SourceRequest:
    """A ``video.source_requested`` event: OSS when ``aspect`` is set, AFS when ``family`` is."""

    coords: Coordinates
    project_slug: str | None
    kind: str
    aspect: str | None
    family: str | None
    accepted_aspects: tuple[str, ...]
    upload_url: str
    storage_key: str
    expires_at: datetime
    callback_url: str

    @property
    def request_kind(self) -> str:
        return "oss" if self.aspect else "afs"

    def layout_fields(self, aspect: str) -> dict[str, Any]:
        """The values a catalog layout template may use, for one candidate aspect."""
        return {
            "project": self.project_slug or "",
            "project_id": self.coords.project_id,
            "code": self.coords.code,
            "variation": self.coords.variation,
            "locale": self.coords.locale,
            "aspect": aspect,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Lifecycle:
    """A follow-up event: the status it sets on the job it finds."""

    status: str
    storage_key: str | None
    coords: Coordinates | None
    aspect: str | None
    reason: str | None


def _obj(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise InvalidPayload(f"{where}{key}: must be an object")
    return value


def _str(data: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidPayload(f"{where}{key}: must be a non-empty string")
    return value


def _check_bounds(data: Mapping[str, Any], creative: Mapping[str, Any], fulfillment: Mapping[str, Any]) -> None:
    """Every string in ``creative``, and projectId, projectSlug and storageKey, is :func:`safe_text`; else the
    first that is not is named."""
    others = {"projectId": data.get("projectId"), "projectSlug": data.get("projectSlug"),
              "fulfillment.storageKey": fulfillment.get("storageKey")}
    for value in (*creative.values(), *others.values()):
        # Short ASCII without a NUL is safe, and is what most fields of most requests are; anything else is
        # measured exactly below.
        if isinstance(value, str) and (len(value) * 4 > FIELD_BYTES or "\x00" in value or not value.isascii()):
            break
    else:
        return
    named = {**{f"creative.{_label(key)}": value for key, value in creative.items()}, **others}
    for name, value in named.items():
        if isinstance(value, str):
            _check_text(value, name)


def _unsafe(value: str) -> bool:
    """True when ``value`` holds what no text column takes: PostgreSQL refuses NUL, and a lone surrogate has
    no UTF-8 form."""
    return "\x00" in value or (not value.isascii() and _SURROGATE.search(value) is not None)


def _check_text(value: str, name: str) -> None:
    if _unsafe(value):
        raise InvalidPayload(f"{name}: holds a NUL or a lone surrogate")
    if not _fits(value):
        raise InvalidPayload(f"{name}: over {FIELD_BYTES} bytes")


def _fits(value: str) -> bool:
    # A character is at most 4 bytes of UTF-8: only a long string needs encoding to be measured.
    return len(value) * 4 <= FIELD_BYTES or len(value.encode("utf-8", "surrogatepass")) <= FIELD_BYTES


def safe_text(value: Any) -> bool:
    """True for a string any text column and index row can hold: at most FIELD_BYTES of UTF-8, no NUL, no
    lone surrogate."""
    return isinstance(value, str) and not _unsafe(value) and _fits(value)


def _shown(value: Any) -> str:
    """``value`` quoted for a message: its repr (which escapes NUL and surrogates), cut short."""
    return _SHORT.repr(value)


def _label(key: Any) -> str:
    """A sender's object key as part of a field name in a message."""
    return key if isinstance(key, str) and len(key) <= 64 and not _unsafe(key) else _shown(key)


def unsafe_string(data: Any) -> str | None:
    """The dotted name of a string (key or value) in ``data`` that holds a NUL or a lone surrogate, or None."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        name, node = stack.pop()
        if isinstance(node, str):
            if _unsafe(node):
                return name
        elif isinstance(node, Mapping):
            for key, value in node.items():
                field = f"{name}.{_label(key)}" if name else _label(key)
                if _unsafe(key):
                    return field
                stack.append((field, value))
        elif isinstance(node, list):
            stack.extend((f"{name}.{i}", value) for i, value in enumerate(node))
    return None


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    # bool is an int in Python; the platform never means True as variation 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise InvalidPayload(f"{where}{key}: must be a non-negative integer (at most {MAX_INT})")
    return value


def _aspect(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > FIELD_BYTES or not _ASPECT.fullmatch(value):
        raise InvalidPayload(f"{where}: must be an aspect like 9x16, got {_shown(value)}")
    return value


def _url(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _str(data, key, where)
    assert value is not None
    try:
        parse_target(value)  # the policy for URLs the worker sends to (see fulfiller.hosts)
    except UnsafeUrl as exc:
        raise InvalidPayload(f"{where}{key}: {exc}") from None
    return value


def parse_timestamp(value: Any, where: str) -> datetime:
    """An ISO 8601 timestamp with a zone (``Z`` or an offset), as the platform sends, in years 1-9999 in UTC
    (what every datetime, and so every reader of the job, can represent)."""
    if not isinstance(value, str):
        raise InvalidPayload(f"{where}: must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidPayload(f"{where}: not an ISO 8601 timestamp: {_shown(value)}") from None
    if parsed.tzinfo is None:
        raise InvalidPayload(f"{where}: timestamp has no time zone: {_shown(value)}")
    try:
        parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-23:59 is in year 10000 in UTC
        raise InvalidPayload(f"{where}: outside years 1-9999 in UTC: {_shown(value)}") from None
    return parsed


def _coords(data: Mapping[str, Any], creative: Mapping[str, Any]) -> Coordinates:
    project_id = _str(data, "projectId", "")
    code = _str(creative, "code", "creative.")
    locale = _str(creative, "locale", "creative.")
    assert project_id and code and locale
    return Coordinates(project_id, code, _int(creative, "variation", "creative."), locale)


def parse_source_request(data: Mapping[str, Any], *, received_at: float | None = None) -> SourceRequest:
    """Check a ``video.source_requested`` body against the platform's documented shape, and against the
    bounds a sender cannot be allowed past (field sizes; with ``received_at``, how far ahead
    ``expiresAt`` may be)."""
    creative = _obj(data, "creative", "")
    fulfillment = _obj(data, "fulfillment", "")
    _check_bounds(data, creative, fulfillment)
    coords = _coords(data, creative)
    slug = _str(data, "projectSlug", "", optional=True)

    kind = creative.get("kind")
    if kind not in KINDS:
        raise InvalidPayload(f"creative.kind: must be one of {list(KINDS)}, got {_shown(kind)}")

    aspect: str | None = None
    family: str | None = None
    accepted: tuple[str, ...] = ()
    if creative.get("aspectRatio") is not None:
        aspect = _aspect(creative["aspectRatio"], "creative.aspectRatio")
        if creative.get("placementFamily") is not None:
            raise InvalidPayload("creative: has both aspectRatio (OSS) and placementFamily (AFS)")
    else:
        family = _str(creative, "placementFamily", "creative.")
        raw = creative.get("acceptedAspects")
        if not isinstance(raw, list) or not raw:
            raise InvalidPayload("creative.acceptedAspects: AFS requests need a non-empty list")
        if len(raw) > MAX_ACCEPTED_ASPECTS:
            raise InvalidPayload(f"creative.acceptedAspects: more than {MAX_ACCEPTED_ASPECTS} ({len(raw)})")
        accepted = tuple(_aspect(a, f"creative.acceptedAspects.{i}") for i, a in enumerate(raw))

    facebook = data.get("facebook")
    if facebook is not None and not isinstance(facebook, Mapping):
        raise InvalidPayload("facebook: must be an object")

    storage_key = _str(fulfillment, "storageKey", "fulfillment.")
    assert storage_key
    upload_url = _url(fulfillment, "uploadUrl", "fulfillment.")
    expires_at = parse_timestamp(fulfillment.get("expiresAt"), "fulfillment.expiresAt")
    if received_at is not None and expires_at.timestamp() > received_at + MAX_AHEAD_S:
        raise InvalidPayload(f"fulfillment.expiresAt: more than {MAX_AHEAD_S // 3600} hours ahead of receipt")
    return SourceRequest(
        coords=coords,
        project_slug=slug,
        kind=kind,
        aspect=aspect,
        family=family,
        accepted_aspects=accepted,
        upload_url=upload_url,
        storage_key=storage_key,
        expires_at=expires_at,
        callback_url=_url(fulfillment, "completeCallbackUrl", "fulfillment."),
    )


def parse_lifecycle(topic: str, data: Mapping[str, Any]) -> Lifecycle:
    """Read a follow-up event leniently: the platform documents its fields only in outline.

    It needs either a storage key (top level or under ``fulfillment``) or full
    coordinates to find its job. A field the store could not hold (see
    :func:`safe_text`) counts as absent.
    """
    fulfillment = data.get("fulfillment") if isinstance(data.get("fulfillment"), Mapping) else {}
    storage_key = data.get("storageKey") or fulfillment.get("storageKey")
    if not storage_key or not safe_text(storage_key):
        storage_key = None
    creative = data.get("creative") if isinstance(data.get("creative"), Mapping) else None
    coords: Coordinates | None = None
    aspect: str | None = None
    if creative is not None:
        try:
            coords = _coords(data, creative)
        except InvalidPayload:
            coords = None
        if coords is not None and not all(map(safe_text, (coords.project_id, coords.code, coords.locale))):
            coords = None
        raw_aspect = creative.get("aspectRatio")
        aspect = raw_aspect if safe_text(raw_aspect) else None
    if storage_key is None and coords is None:
        raise InvalidPayload("needs a usable storageKey or projectId + creative.code/variation/locale to find its job")
    reason = None
    for key in ("reason", "rejectionReason", "detail"):
        value = data.get(key)
        if isinstance(value, str) and not _unsafe(value):
            reason = value[:FIELD_BYTES]  # shown to operators, not matched: cut, not refused
            break
    return Lifecycle(LIFECYCLE_STATUS[topic], storage_key, coords, aspect, reason)
