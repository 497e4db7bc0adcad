"""The platform's event shapes: its documented examples parse; each broken field is named."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

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


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:01"])
def test_timestamps_outside_years_1_to_9999_in_utc(value: str) -> None:
    with pytest.raises(InvalidPayload, match="fulfillment.expiresAt: outside years 1-9999"):
        parse_timestamp(value, "fulfillment.expiresAt")


def test_the_first_and_last_representable_instants_parse() -> None:
    assert parse_timestamp("9999-12-31T23:59:59Z", "x").year == 9999
    assert parse_timestamp("0001-01-01T00:00:00-01:00", "x").year == 1


# --- bounds: nothing a sender writes may exceed an index, a slot or a deadline -----------------------


def test_expires_at_may_be_at_most_24_hours_past_receipt() -> None:
    data = load(OSS_EXAMPLE)
    expires = datetime(2026, 4, 24, 1, 0, tzinfo=UTC).timestamp()
    assert parse_source_request(data, received_at=expires - 24 * 3600).expires_at.timestamp() == expires
    with pytest.raises(InvalidPayload, match="fulfillment.expiresAt: more than 24 hours ahead"):
        parse_source_request(data, received_at=expires - 24 * 3600 - 1)
    assert parse_source_request(data).expires_at.timestamp() == expires  # no receipt: no horizon (a rerun)


@pytest.mark.parametrize("example, path", [
    (OSS_EXAMPLE, "projectId"), (OSS_EXAMPLE, "projectSlug"), (OSS_EXAMPLE, "creative.code"),
    (OSS_EXAMPLE, "creative.locale"), (OSS_EXAMPLE, "creative.kind"), (OSS_EXAMPLE, "creative.somethingNew"),
    (AFS_EXAMPLE, "creative.placementFamily"), (OSS_EXAMPLE, "fulfillment.storageKey"),
])
def test_fields_over_1024_bytes_of_utf8_are_refused_by_name(example: str, path: str) -> None:
    with pytest.raises(InvalidPayload, match=f"^{re.escape(path)}: over 1024 bytes"):
        parse_source_request(broken(example, path, "é" * 513))  # 513 characters, 1,026 bytes
    if path not in ("creative.kind", "creative.placementFamily"):  # those two only take their few values
        parse_source_request(broken(example, path, "é" * 511 + "xy"))  # 1,024 bytes


@pytest.mark.parametrize("value", ["HRT\x00-1", "HRT-\ud800", "\udfff"])
@pytest.mark.parametrize("path", ["projectId", "creative.code", "creative.locale", "fulfillment.storageKey"])
def test_nul_and_lone_surrogates_are_refused_by_name(path: str, value: str) -> None:
    with pytest.raises(InvalidPayload, match=f"^{re.escape(path)}: holds a NUL or a lone surrogate"):
        parse_source_request(broken(OSS_EXAMPLE, path, value))


def test_astral_characters_are_not_surrogates() -> None:
    assert parse_source_request(broken(OSS_EXAMPLE, "creative.code", "HRT-😀")).coords.code == "HRT-😀"


def test_at_most_32_accepted_aspects() -> None:
    aspects = [f"{n}x1" for n in range(1, 34)]
    accepted = parse_source_request(broken(AFS_EXAMPLE, "creative.acceptedAspects", aspects[:32])).accepted_aspects
    assert len(accepted) == 32
    with pytest.raises(InvalidPayload, match=r"creative.acceptedAspects: more than 32 \(33\)"):
        parse_source_request(broken(AFS_EXAMPLE, "creative.acceptedAspects", aspects))


@pytest.mark.parametrize("value", ["9x16\n", "1" * 1100 + "x1"])
def test_an_aspect_is_exactly_the_pattern_and_short(value: str) -> None:
    with pytest.raises(InvalidPayload, match="creative.aspectRatio"):
        parse_source_request(broken(OSS_EXAMPLE, "creative.aspectRatio", value))


@pytest.mark.parametrize("path, value", [
    ("creative.kind", "v" * 1_000_000), ("creative.kind", ["x"] * 100_000), ("creative.aspectRatio", "9" * 1000),
    ("fulfillment.expiresAt", "x" * 100_000),
])
def test_a_message_quotes_a_huge_value_cut_short(path: str, value: Any) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_source_request(broken(OSS_EXAMPLE, path, value))
    assert path in str(info.value) and len(str(info.value)) < 300


def test_unsafe_string_names_where_a_nul_or_lone_surrogate_is() -> None:
    assert events.unsafe_string({"a": ["ok", {"b": "😀 \u00e9"}], "n": 1, "t": True, "z": None}) is None
    assert events.unsafe_string({"a": ["ok", {"b": "x\x00"}]}) == "a.1.b"
    assert events.unsafe_string({"facebook": {"ads": [{"name": "\ud83d"}]}}) == "facebook.ads.0.name"
    assert events.unsafe_string({"creative": {"k\udc00": 1}}) == "creative.'k\\udc00'"  # the key, quoted


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


@pytest.mark.parametrize("bad", ["k" * 1025, "fb-external/\x00", "\ud800"])
def test_lifecycle_storage_key_the_store_could_not_hold_counts_as_absent(bad: str) -> None:
    lc = parse_lifecycle(events.SOURCE_FULFILLED, {**COORDS, "storageKey": bad})
    assert lc.storage_key is None and lc.coords is not None  # found by its coordinates, if at all
    with pytest.raises(InvalidPayload, match="usable storageKey"):
        parse_lifecycle(events.SOURCE_FULFILLED, {"storageKey": bad})


@pytest.mark.parametrize("field, bad", [("code", "HRT\x00"), ("locale", "e" * 1025), ("code", "\udfff")])
def test_lifecycle_coordinates_the_store_could_not_hold_count_as_absent(field: str, bad: str) -> None:
    data = {**COORDS, "creative": {**COORDS["creative"], field: bad}}
    with pytest.raises(InvalidPayload, match="usable storageKey"):
        parse_lifecycle(events.SOURCE_TIMEOUT, data)
    assert parse_lifecycle(events.SOURCE_TIMEOUT, {**data, "storageKey": KEY}).coords is None


def test_lifecycle_reason_and_aspect_are_kept_only_when_storable() -> None:
    creative = {**COORDS["creative"], "aspectRatio": "4x5\x00"}
    lc = parse_lifecycle(events.SOURCE_REJECTED, {**COORDS, "creative": creative, "reason": "bad\x00"})
    assert (lc.aspect, lc.reason) == (None, None)
    assert parse_lifecycle(events.SOURCE_REJECTED, {"storageKey": KEY, "reason": "r" * 5000}).reason == "r" * 1024


# --- URLs: only those the worker may send to ------------------------------------------------------
# The policy itself (fulfiller.hosts.parse_target) is tested in test_hosts; here, that a request whose URL
# breaks it is invalid, and that the message names the field.

HOSTILE_URLS = [
    # urllib.parse reads the host after the "@", urllib3 (which uploads) the one before the backslash
    "https://attacker.example\\@acct.r2.cloudflarestorage.com/k?X-Amz-Signature=s",
    "https://acct.r2.cloudflarestorage.com\n.evil.example/k",  # httpx refuses it: a crash at callback time
    "https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.r2.cloudflarestorage.com/k",  # full-width letters
    "https://user:pw@acct.r2.cloudflarestorage.com/k",
    "https://acct.r2.cloudflarestorage.com/k x",
    "https://acct.r2.cloudflarestorage.com/k\x00",
    "https://acct.r2.cloudflarestorage.com/k\x1b[2J",
    "https://acct.r2.cloudflarestorage.com/k\u2028",
    "https://%61cct.r2.cloudflarestorage.com/k",  # urllib3 decodes the escape, urllib.parse does not
    "https://acct.r2.cloudflarestorage.com:0/k",
    "https://acct.r2.cloudflarestorage.com:/k",
    "https://acct.r2.cloudflarestorage.com/" + "k" * (8 * 1024),
    "HTTPS://acct.r2.cloudflarestorage.com/k\t",
]


@pytest.mark.parametrize("field", ["uploadUrl", "completeCallbackUrl"])
@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_a_url_the_worker_must_not_send_to_makes_the_request_invalid(field: str, url: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        parse_source_request(broken(OSS_EXAMPLE, f"fulfillment.{field}", url))
    assert str(info.value).startswith(f"fulfillment.{field}: ")


@pytest.mark.parametrize("url", [
    "https://acct.r2.cloudflarestorage.com/bucket/k?X-Amz-Signature=abc&X-Amz-Date=20260424T000000Z",
    "HTTPS://Acct.R2.CloudflareStorage.com:443/k",
    "http://127.0.0.1:9000/r2/k",  # plain http is refused (or not) at send time, by worker.allow_insecure_http
    "https://[::1]:8443/k",
    "https://acct.r2.cloudflarestorage.com/k%20with%20escapes/\u00e9t\u00e9",  # non-ASCII only outside the host
    "https://acct.r2.cloudflarestorage.com/" + "k" * (8 * 1024 - 40),
])
def test_a_url_within_the_policy_is_taken_as_sent(url: str) -> None:
    req = parse_source_request(broken(OSS_EXAMPLE, "fulfillment.uploadUrl", url))
    assert req.upload_url == url
