"""The platform's event shapes: its documented examples parse; each broken field is named."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulfiller import events
from fulfiller.events import InvalidPayload, parse_lifecycle, parse_source_request, parse_timestamp

# The two examples from the platform's webhook page, as published (the AFS one carries a // comment there).
OSS_EXAMPLE = """
{
  "projectId": "019d928c-02e1-...",
  "projectSlug": "hearty",
  "creative": {
    "code": "HRT-1212",
    "variation": 2,
    "locale": "en",
    "aspectRatio": "9x16",
    "kind": "video"
  },
  "facebook": {
    "facebookMediaIds": ["fm_a", "fm_b"],
    "ads": [
      { "id": "120244000819040432", "name": "15-08-25 HRT-1212-2", "adAccountId": "743795164364156" }
    ],
    "adsets": [
      { "id": "120234224516300432", "name": "Broad - US - v2" }
    ],
    "campaigns": [
      { "id": "120234224515520432", "name": "HRT Prospecting - Sep" }
    ]
  },
  "fulfillment": {
    "uploadUrl": "https://r2.../...?X-Amz-Signature=...",
    "storageKey": "fb-external/019d928c/HRT-1212/v2/en/9x16.video",
    "expiresAt": "2026-04-24T01:00:00Z",
    "completeCallbackUrl": "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete"
  }
}
"""

AFS_EXAMPLE = """
{
  "projectId": "019d928c-02e1-...",
  "projectSlug": "hearty",
  "creative": {
    "code": "HRT-1212",
    "variation": 2,
    "locale": "en",
    "placementFamily": "feed",
    "acceptedAspects": ["1x1", "3x4", "4x5"],
    "kind": "video"
    // aspectRatio is absent — fulfiller picks one and reports it in the callback
  },
  "facebook": {
    "facebookMediaIds": [],
    "ads": [
      { "id": "120244000819040432", "name": "15-08-25 HRT-1212-2", "adAccountId": "743795164364156" }
    ],
    "adsets": [
      { "id": "120234224516300432", "name": "Broad - US - v2" }
    ],
    "campaigns": [
      { "id": "120234224515520432", "name": "HRT Prospecting - Sep" }
    ]
  },
  "fulfillment": {
    "uploadUrl": "https://r2.../fb-external/019d928c/HRT-1212/v2/en/feed.video?X-Amz-Signature=...",
    "storageKey": "fb-external/019d928c/HRT-1212/v2/en/feed.video",
    "expiresAt": "2026-04-24T01:00:00Z",
    "completeCallbackUrl": "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete"
  }
}
"""


def load(example: str) -> dict[str, Any]:
    return json.loads(re.sub(r"(?m)^\s*//.*$", "", example))


def test_oss_example_parses() -> None:
    req = parse_source_request(load(OSS_EXAMPLE))
    assert req.request_kind == "oss"
    assert req.coords == events.Coordinates("019d928c-02e1-...", "HRT-1212", 2, "en")
    assert req.project_slug == "hearty"
    assert req.kind == "video"
    assert req.aspect == "9x16"
    assert req.family is None
    assert req.accepted_aspects == ()
    assert req.storage_key == "fb-external/019d928c/HRT-1212/v2/en/9x16.video"
    assert req.upload_url == "https://r2.../...?X-Amz-Signature=..."
    assert req.callback_url.endswith("/waitpoint_abc/complete")
    assert req.expires_at == datetime(2026, 4, 24, 1, 0, tzinfo=UTC)
    assert req.layout_fields("9x16") == {
        "project": "hearty", "project_id": "019d928c-02e1-...", "code": "HRT-1212", "variation": 2,
        "locale": "en", "aspect": "9x16", "kind": "video",
    }


def test_afs_example_parses() -> None:
    req = parse_source_request(load(AFS_EXAMPLE))
    assert req.request_kind == "afs"
    assert req.aspect is None
    assert req.family == "feed"
    assert req.accepted_aspects == ("1x1", "3x4", "4x5")
    assert req.storage_key.endswith("/feed.video")


def test_image_kind_and_story_reel_family() -> None:
    data = load(AFS_EXAMPLE)
    data["creative"].update(kind="image", placementFamily="story_reel", acceptedAspects=["9x16"])
    req = parse_source_request(data)
    assert (req.kind, req.family, req.accepted_aspects) == ("image", "story_reel", ("9x16",))


def test_optional_fields_may_be_absent() -> None:
    data = load(OSS_EXAMPLE)
    del data["projectSlug"], data["facebook"]
    req = parse_source_request(data)
    assert req.project_slug is None
    assert req.layout_fields("9x16")["project"] == ""
    data["projectSlug"] = None
    assert parse_source_request(data).project_slug is None


def test_unknown_extra_fields_are_ignored() -> None:
    data = load(OSS_EXAMPLE)
    data["somethingNew"] = {"x": 1}
    data["creative"]["newField"] = True
    assert parse_source_request(data).aspect == "9x16"


def broken(example: str, path: str, value: Any = ...) -> dict[str, Any]:
    """The example with the field at dotted ``path`` removed (``...``) or replaced."""
    data = copy.deepcopy(load(example))
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return data


@pytest.mark.parametrize("example, path, value, named", [
    (OSS_EXAMPLE, "projectId", ..., "projectId"),
    (OSS_EXAMPLE, "projectId", "", "projectId"),
    (OSS_EXAMPLE, "projectId", "   ", "projectId"),
    (OSS_EXAMPLE, "projectId", 42, "projectId"),
    (OSS_EXAMPLE, "projectSlug", 7, "projectSlug"),
    (OSS_EXAMPLE, "creative", ..., "creative"),
    (OSS_EXAMPLE, "creative", [], "creative"),
    (OSS_EXAMPLE, "creative.code", ..., "creative.code"),
    (OSS_EXAMPLE, "creative.code", None, "creative.code"),
    (OSS_EXAMPLE, "creative.locale", ..., "creative.locale"),
    (OSS_EXAMPLE, "creative.variation", ..., "creative.variation"),
    (OSS_EXAMPLE, "creative.variation", "2", "creative.variation"),
    (OSS_EXAMPLE, "creative.variation", 2.0, "creative.variation"),
    (OSS_EXAMPLE, "creative.variation", -1, "creative.variation"),
    (OSS_EXAMPLE, "creative.variation", True, "creative.variation"),
    (OSS_EXAMPLE, "creative.variation", 2**63, "creative.variation"),
    (OSS_EXAMPLE, "creative.kind", ..., "creative.kind"),
    (OSS_EXAMPLE, "creative.kind", "audio", "creative.kind"),
    (OSS_EXAMPLE, "creative.kind", "VIDEO", "creative.kind"),
    (OSS_EXAMPLE, "creative.aspectRatio", "9:16", "creative.aspectRatio"),
    (OSS_EXAMPLE, "creative.aspectRatio", "0x16", "creative.aspectRatio"),
    (OSS_EXAMPLE, "creative.aspectRatio", 916, "creative.aspectRatio"),
    (OSS_EXAMPLE, "creative.placementFamily", "feed", "placementFamily"),  # OSS and AFS at once
    (OSS_EXAMPLE, "facebook", "fm_a", "facebook"),
    (OSS_EXAMPLE, "fulfillment", ..., "fulfillment"),
    (OSS_EXAMPLE, "fulfillment", "https://r2", "fulfillment"),
    (OSS_EXAMPLE, "fulfillment.uploadUrl", ..., "fulfillment.uploadUrl"),
    (OSS_EXAMPLE, "fulfillment.uploadUrl", "ftp://r2/x", "fulfillment.uploadUrl"),
    (OSS_EXAMPLE, "fulfillment.uploadUrl", "/relative/path", "fulfillment.uploadUrl"),
    (OSS_EXAMPLE, "fulfillment.uploadUrl", "https://", "fulfillment.uploadUrl"),
    (OSS_EXAMPLE, "fulfillment.storageKey", ..., "fulfillment.storageKey"),
    (OSS_EXAMPLE, "fulfillment.storageKey", "", "fulfillment.storageKey"),
    (OSS_EXAMPLE, "fulfillment.expiresAt", ..., "fulfillment.expiresAt"),
    (OSS_EXAMPLE, "fulfillment.expiresAt", "in an hour", "fulfillment.expiresAt"),
    (OSS_EXAMPLE, "fulfillment.expiresAt", "2026-04-24T01:00:00", "fulfillment.expiresAt"),  # no zone
    (OSS_EXAMPLE, "fulfillment.expiresAt", 1777000000, "fulfillment.expiresAt"),
    (OSS_EXAMPLE, "fulfillment.completeCallbackUrl", ..., "fulfillment.completeCallbackUrl"),
    (OSS_EXAMPLE, "fulfillment.completeCallbackUrl", "mailto:x@y", "fulfillment.completeCallbackUrl"),
    (AFS_EXAMPLE, "creative.placementFamily", ..., "creative.placementFamily"),
    (AFS_EXAMPLE, "creative.acceptedAspects", ..., "creative.acceptedAspects"),
    (AFS_EXAMPLE, "creative.acceptedAspects", [], "creative.acceptedAspects"),
    (AFS_EXAMPLE, "creative.acceptedAspects", "1x1", "creative.acceptedAspects"),
    (AFS_EXAMPLE, "creative.acceptedAspects", ["1x1", "square"], "creative.acceptedAspects.1"),
])
def test_each_broken_field_is_named(example: str, path: str, value: Any, named: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_source_request(broken(example, path, value))
    assert named in str(info.value)


def test_a_bad_value_is_quoted_in_the_message() -> None:
    with pytest.raises(InvalidPayload, match="'audio'"):
        parse_source_request(broken(OSS_EXAMPLE, "creative.kind", "audio"))


@pytest.mark.parametrize("text, expected", [
    ("2026-04-24T01:00:00Z", datetime(2026, 4, 24, 1, 0, tzinfo=UTC)),
    ("2026-04-24T01:00:00z", datetime(2026, 4, 24, 1, 0, tzinfo=UTC)),
    ("2026-04-24T01:00:00.250Z", datetime(2026, 4, 24, 1, 0, 0, 250000, tzinfo=UTC)),
    ("2026-04-24T03:00:00+02:00", datetime(2026, 4, 24, 1, 0, tzinfo=UTC)),
    ("2026-04-23T20:00:00-05:00", datetime(2026, 4, 24, 1, 0, tzinfo=UTC)),
])
def test_timestamps_with_a_zone(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text, "fulfillment.expiresAt")
    assert parsed == expected
    assert parsed.utcoffset() is not None


def test_timestamp_keeps_its_offset() -> None:
    assert parse_timestamp("2026-04-24T03:00:00+02:00", "x").tzinfo == timezone(timedelta(hours=2))


@pytest.mark.parametrize("value", ["", "yesterday", "2026-13-01T00:00:00Z", "2026-04-24", None, 0, []])
def test_bad_timestamps(value: Any) -> None:
    with pytest.raises(InvalidPayload, match="where"):
        parse_timestamp(value, "where")


# --- lifecycle --------------------------------------------------------------------------------------

COORDS = {
    "projectId": "019d928c-02e1-...", "projectSlug": "hearty",
    "creative": {"code": "HRT-1212", "variation": 2, "locale": "en", "aspectRatio": "4x5", "kind": "video"},
}
KEY = "fb-external/019d928c/HRT-1212/v2/en/feed.video"


@pytest.mark.parametrize("topic, status", [
    (events.SOURCE_FULFILLED, "fulfilled"), (events.SOURCE_REJECTED, "rejected"), (events.SOURCE_TIMEOUT, "timed_out"),
])
def test_lifecycle_status_per_topic(topic: str, status: str) -> None:
    assert parse_lifecycle(topic, {"storageKey": KEY}).status == status


def test_lifecycle_reads_coordinates_aspect_and_storage_key() -> None:
    data = {**COORDS, "fulfillment": {"storageKey": KEY}, "deliveryChannel": "webhook"}
    lc = parse_lifecycle(events.SOURCE_FULFILLED, data)
    assert lc.storage_key == KEY
    assert lc.coords == events.Coordinates("019d928c-02e1-...", "HRT-1212", 2, "en")
    assert lc.aspect == "4x5"
    assert lc.reason is None


def test_lifecycle_storage_key_at_top_level_wins_over_fulfillment() -> None:
    lc = parse_lifecycle(events.SOURCE_FULFILLED, {"storageKey": "top", "fulfillment": {"storageKey": "nested"}})
    assert lc.storage_key == "top"
    assert lc.coords is None


def test_lifecycle_by_coordinates_alone() -> None:
    lc = parse_lifecycle(events.SOURCE_TIMEOUT, {**COORDS, "requestedAt": "2026-04-24T00:00:00Z"})
    assert lc.storage_key is None
    assert lc.coords is not None and lc.coords.code == "HRT-1212"


@pytest.mark.parametrize("key", ["reason", "rejectionReason", "detail"])
def test_lifecycle_reason(key: str) -> None:
    lc = parse_lifecycle(events.SOURCE_REJECTED, {"storageKey": KEY, key: "aspect_ratio_not_accepted_for_feed"})
    assert lc.reason == "aspect_ratio_not_accepted_for_feed"


def test_lifecycle_with_broken_coordinates_still_uses_its_storage_key() -> None:
    data = {**COORDS, "creative": {**COORDS["creative"], "variation": "two"}, "storageKey": KEY}
    lc = parse_lifecycle(events.SOURCE_FULFILLED, data)
    assert lc.storage_key == KEY
    assert lc.coords is None


@pytest.mark.parametrize("data", [
    {},
    {"projectId": "p"},
    {"creative": {"code": "HRT-1212", "variation": 2, "locale": "en"}},  # no projectId
    {**COORDS, "creative": {"code": "HRT-1212", "locale": "en"}},  # no variation
    {"storageKey": ""},
    {"storageKey": 12},
    {"fulfillment": "not an object"},
    {"creative": "not an object", "projectId": "p"},
])
def test_lifecycle_that_cannot_find_a_job(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload, match="storageKey"):
        parse_lifecycle(events.SOURCE_FULFILLED, data)


# --- the URL fast path ------------------------------------------------------------------------


@given(st.from_regex(events._PLAIN_URL))
def test_every_url_the_fast_path_takes_passes_the_full_check(url: str) -> None:
    parts = urlsplit(url)
    assert parts.port is None  # raises on a bad port
    assert parts.scheme in ("http", "https") and parts.hostname


@pytest.mark.parametrize("url", [
    "https://h:8443/x", "HTTPS://h/x", "https://user:pw@h/x", "https://[::1]/x", "https://h:99999/x",
    "https://[::1/x", "ftp://h/x", "https:///x", "https://h x", "//h/x",
])
def test_other_urls_take_the_full_check(url: str) -> None:
    assert not events._PLAIN_URL.match(url)
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:
        valid = False
    data = {"u": url}
    if valid:
        assert events._url(data, "u", "") == url
    else:
        with pytest.raises(InvalidPayload):
            events._url(data, "u", "")
