"""The platform's events, checked against its documented shapes.

``video.source_requested`` becomes a :class:`SourceRequest` or an
:class:`InvalidPayload` naming the first broken field: a signed event of the
wrong shape is kept (and its job marked ``invalid``) because redelivering it
would never help. Lifecycle events become a :class:`Lifecycle` that says which
job they close and how.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from fulfiller.media import KINDS

SOURCE_REQUESTED = "video.source_requested"
SOURCE_FULFILLED = "video.source_fulfilled"
SOURCE_REJECTED = "video.source_rejected"
SOURCE_TIMEOUT = "video.source_timeout"
LIFECYCLE_STATUS = {SOURCE_FULFILLED: "fulfilled", SOURCE_REJECTED: "rejected", SOURCE_TIMEOUT: "timed_out"}
TOPICS = frozenset({SOURCE_REQUESTED, *LIFECYCLE_STATUS})

_ASPECT = re.compile(r"^[1-9][0-9]*x[1-9][0-9]*$")
# An absolute http(s) URL with a plain host name and no port, userinfo or IPv6 literal: every string
# it matches passes the urlsplit checks in _url, which the others still go through.
_PLAIN_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?:[/?#]|$)")
MAX_INT = 2**63 - 1  # the widest integer a database column (SQLite INTEGER, PostgreSQL BIGINT) holds


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


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    # bool is an int in Python; the platform never means True as variation 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise InvalidPayload(f"{where}{key}: must be a non-negative integer (at most {MAX_INT})")
    return value


def _aspect(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _ASPECT.match(value):
        raise InvalidPayload(f"{where}: must be an aspect like 9x16, got {value!r}")
    return value


def _url(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _str(data, key, where)
    assert value is not None
    if _PLAIN_URL.match(value):  # the usual shape, valid without the cost of splitting it
        return value
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        raise InvalidPayload(f"{where}{key}: not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidPayload(f"{where}{key}: must be an absolute http(s) URL")
    return value


def parse_timestamp(value: Any, where: str) -> datetime:
    """An ISO 8601 timestamp with a zone (``Z`` or an offset), as the platform sends."""
    if not isinstance(value, str):
        raise InvalidPayload(f"{where}: must be an ISO 8601 timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidPayload(f"{where}: not an ISO 8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        raise InvalidPayload(f"{where}: timestamp has no time zone: {value!r}")
    return parsed


def _coords(data: Mapping[str, Any], creative: Mapping[str, Any]) -> Coordinates:
    project_id = _str(data, "projectId", "")
    code = _str(creative, "code", "creative.")
    locale = _str(creative, "locale", "creative.")
    assert project_id and code and locale
    return Coordinates(project_id, code, _int(creative, "variation", "creative."), locale)


def parse_source_request(data: Mapping[str, Any]) -> SourceRequest:
    """Check a ``video.source_requested`` body against the platform's documented shape."""
    creative = _obj(data, "creative", "")
    fulfillment = _obj(data, "fulfillment", "")
    coords = _coords(data, creative)
    slug = _str(data, "projectSlug", "", optional=True)

    kind = creative.get("kind")
    if kind not in KINDS:
        raise InvalidPayload(f"creative.kind: must be one of {list(KINDS)}, got {kind!r}")

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
        accepted = tuple(_aspect(a, f"creative.acceptedAspects.{i}") for i, a in enumerate(raw))

    facebook = data.get("facebook")
    if facebook is not None and not isinstance(facebook, Mapping):
        raise InvalidPayload("facebook: must be an object")

    storage_key = _str(fulfillment, "storageKey", "fulfillment.")
    assert storage_key
    return SourceRequest(
        coords=coords,
        project_slug=slug,
        kind=kind,
        aspect=aspect,
        family=family,
        accepted_aspects=accepted,
        upload_url=_url(fulfillment, "uploadUrl", "fulfillment."),
        storage_key=storage_key,
        expires_at=parse_timestamp(fulfillment.get("expiresAt"), "fulfillment.expiresAt"),
        callback_url=_url(fulfillment, "completeCallbackUrl", "fulfillment."),
    )


def parse_lifecycle(topic: str, data: Mapping[str, Any]) -> Lifecycle:
    """Read a follow-up event leniently: the platform documents its fields only in outline.

    It needs either a storage key (top level or under ``fulfillment``) or full
    coordinates to find its job.
    """
    fulfillment = data.get("fulfillment") if isinstance(data.get("fulfillment"), Mapping) else {}
    storage_key = data.get("storageKey") or fulfillment.get("storageKey")
    if not isinstance(storage_key, str) or not storage_key:
        storage_key = None
    creative = data.get("creative") if isinstance(data.get("creative"), Mapping) else None
    coords: Coordinates | None = None
    aspect: str | None = None
    if creative is not None:
        try:
            coords = _coords(data, creative)
        except InvalidPayload:
            coords = None
        raw_aspect = creative.get("aspectRatio")
        aspect = raw_aspect if isinstance(raw_aspect, str) else None
    if storage_key is None and coords is None:
        raise InvalidPayload("needs a storageKey or projectId + creative.code/variation/locale to find its job")
    reason = None
    for key in ("reason", "rejectionReason", "detail"):
        if isinstance(data.get(key), str):
            reason = data[key]
            break
    return Lifecycle(LIFECYCLE_STATUS[topic], storage_key, coords, aspect, reason)
