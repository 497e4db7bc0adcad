"""plan(): what one verified delivery asks of the store (pure: no web, no database)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulfiller import events, jobs
from fulfiller.intake.admission import NotAnObject, new_job, parse_object, plan, wait_token_key
from fulfiller.jobs import FINAL, Status
from fulfiller.ops.testevent import sample_event
from fulfiller.store.ingest import NEW_JOB_COLUMNS

NOW = 1_777_000_000.0
UPLOAD = "https://acct.r2.cloudflarestorage.com/bucket/key?X-Amz-Signature=abc"
CALLBACK = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete"


def oss() -> dict[str, Any]:
    event = sample_event(UPLOAD, CALLBACK)
    event["fulfillment"]["expiresAt"] = "2026-04-24T01:00:00Z"
    return event


def afs() -> dict[str, Any]:
    event = oss()
    del event["creative"]["aspectRatio"]
    event["creative"].update(placementFamily="feed", acceptedAspects=["1x1", "3x4", "4x5"])
    event["fulfillment"]["storageKey"] = "fb-external/019d928c/HRT-1212/v2/en/feed.video"
    return event


def test_a_request_plans_a_queued_job_with_its_coordinates() -> None:
    data = oss()
    body = json.dumps(data)
    incoming = plan("evt_1", events.SOURCE_REQUESTED, body, data, NOW)
    assert (incoming.event_id, incoming.topic, incoming.body) == ("evt_1", events.SOURCE_REQUESTED, body)
    assert incoming.received_at == NOW
    assert incoming.lifecycle is None and incoming.note is None
    job = incoming.job
    assert job is not None
    assert job.id.startswith("job_")
    assert job.event_id == "evt_1"
    assert job.status == Status.QUEUED
    assert job.request_kind == "oss"
    assert job.payload == data
    assert job.storage_key == data["fulfillment"]["storageKey"]
    assert (job.project_id, job.code, job.variation, job.locale) == (data["projectId"], "HRT-1212", 2, "en")
    assert job.chosen_aspect == "9x16"  # OSS: the platform already chose
    assert job.expires_at == datetime(2026, 4, 24, 1, 0, tzinfo=UTC).timestamp()
    assert job.created_at == job.updated_at == NOW
    assert job.error is None
    assert job.attempts == []


def test_an_afs_request_leaves_the_aspect_to_the_worker() -> None:
    job = plan("evt_afs", events.SOURCE_REQUESTED, "{}", afs(), NOW).job
    assert job is not None
    assert job.status == Status.QUEUED
    assert job.request_kind == "afs"
    assert job.chosen_aspect is None


def test_each_planned_job_gets_its_own_id() -> None:
    planned = [plan(f"evt_{i}", events.SOURCE_REQUESTED, "{}", oss(), NOW).job for i in range(50)]
    assert len({job.id for job in planned if job is not None}) == 50


def test_the_job_keeps_a_copy_of_the_payload() -> None:
    data = oss()
    job = new_job("evt", data, NOW)
    data["creative"]["code"] = "CHANGED"
    data["extra"] = 1
    assert "extra" not in job.payload


@pytest.mark.parametrize("mutate, reason", [
    (lambda e: e["creative"].update(kind="hologram"), "creative.kind"),
    (lambda e: e["fulfillment"].update(uploadUrl="not a url"), "fulfillment.uploadUrl"),
    (lambda e: e["creative"].update(placementFamily="feed"), "placementFamily"),
    (lambda e: e["fulfillment"].pop("completeCallbackUrl"), "fulfillment.completeCallbackUrl"),
])
def test_an_invalid_request_plans_an_invalid_job_with_the_reason_and_readable_coordinates(
    mutate: Any, reason: str
) -> None:
    data = oss()
    mutate(data)
    job = plan("evt_bad", events.SOURCE_REQUESTED, "{}", data, NOW).job
    assert job is not None
    assert job.status == Status.INVALID
    assert job.error is not None and job.error.startswith("invalid payload: ") and reason in job.error
    assert job.request_kind is None
    assert job.payload == data
    # What can be read is kept, so operators can still find the job.
    assert (job.project_id, job.code, job.variation, job.locale) == (data["projectId"], "HRT-1212", 2, "en")
    assert job.storage_key == data["fulfillment"]["storageKey"]
    assert job.expires_at == datetime(2026, 4, 24, 1, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("variation", [True, "2", 2.5, -1, 2**63, None])
def test_an_invalid_job_drops_unusable_coordinates(variation: Any) -> None:
    data = oss()
    data["creative"]["variation"] = variation
    data["creative"]["code"] = 12
    data["fulfillment"]["expiresAt"] = "soon"
    data["projectId"] = ["p"]
    job = new_job("evt", data, NOW)
    assert job.status == Status.INVALID
    assert "creative.code" in job.error or "projectId" in job.error  # the first broken field
    assert job.variation is None
    assert job.code is None
    assert job.project_id is None
    assert job.expires_at is None
    assert job.locale == "en"


def test_an_empty_request_is_invalid_not_an_error() -> None:
    job = new_job("evt_empty", {}, NOW)
    assert job.status == Status.INVALID
    assert "creative" in job.error
    assert (job.storage_key, job.project_id, job.code, job.variation, job.locale) == (None,) * 5


@pytest.mark.parametrize("topic", ["video.source_deleted", "", "VIDEO.SOURCE_REQUESTED", "video.source_requested "])
def test_an_unknown_topic_is_only_recorded(topic: str) -> None:
    incoming = plan("evt_x", topic, '{"a": 1}', {"a": 1}, NOW)
    assert incoming.job is None and incoming.lifecycle is None
    assert incoming.note == "unknown topic: stored, nothing to do"
    assert incoming.body == '{"a": 1}'


@pytest.mark.parametrize("topic, status", [
    (events.SOURCE_FULFILLED, Status.FULFILLED), (events.SOURCE_REJECTED, Status.REJECTED),
    (events.SOURCE_TIMEOUT, Status.TIMED_OUT),
])
def test_a_lifecycle_event_plans_a_status_for_its_job(topic: str, status: str) -> None:
    data = {"fulfillment": {"storageKey": "fb-external/k"}, "reason": "corrupt file"}
    incoming = plan("evt_lc", topic, "{}", data, NOW)
    assert incoming.job is None and incoming.note is None
    assert incoming.lifecycle is not None
    assert incoming.lifecycle.status == status
    assert incoming.lifecycle.storage_key == "fb-external/k"
    assert incoming.lifecycle.reason == "corrupt file"


def test_lifecycle_statuses_are_job_statuses() -> None:
    assert set(events.LIFECYCLE_STATUS.values()) <= set(FINAL)


def test_a_lifecycle_event_that_names_no_job_is_recorded_with_a_note() -> None:
    incoming = plan("evt_lc", events.SOURCE_TIMEOUT, "{}", {"projectId": "p"}, NOW)
    assert incoming.job is None and incoming.lifecycle is None
    assert incoming.note is not None and incoming.note.startswith("unmatched: ")


@pytest.mark.parametrize("data", [oss(), afs(), {"projectId": "p", "creative": {"variation": 1}}],
                         ids=["oss", "afs", "invalid"])
def test_a_new_job_sets_only_the_columns_the_store_inserts(data: dict[str, Any]) -> None:
    """The store inserts a new job's NEW_JOB_COLUMNS and leaves the rest to the table's defaults, the Job's own."""
    job = new_job("evt_1", data, NOW)
    fresh = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
             for f in dataclasses.fields(jobs.Job) if f.name not in NEW_JOB_COLUMNS}
    assert {name: getattr(job, name) for name in fresh} == fresh


# --- hostile input ------------------------------------------------------------------------------


def test_every_new_job_keys_its_wait_token() -> None:
    assert new_job("evt", oss(), NOW).callback_key == CALLBACK  # a usual URL is its own key
    broken = oss()
    broken["creative"]["kind"] = "hologram"
    invalid = new_job("evt", broken, NOW)
    assert (invalid.status, invalid.callback_key) == (Status.INVALID, CALLBACK)  # replays of it are duplicates too
    unsafe = oss()
    unsafe["fulfillment"]["completeCallbackUrl"] = "https://x/\ud800"
    assert new_job("evt", unsafe, NOW).callback_key == "sha256:" + hashlib.sha256(b"https://x/\xed\xa0\x80").hexdigest()
    for missing in ({}, {"fulfillment": {"completeCallbackUrl": 7}}, {"fulfillment": "x"}):
        assert new_job("evt", missing, NOW).callback_key is None


def test_a_wait_token_too_long_for_an_index_row_is_keyed_by_its_digest() -> None:
    long = "https://api.trigger.dev/tokens/" + "t" * 8000
    assert wait_token_key(long) == "sha256:" + hashlib.sha256(long.encode()).hexdigest()
    assert wait_token_key("https://a/" + "t" * 502) == "https://a/" + "t" * 502  # 512 bytes: as it is
    assert wait_token_key("https://a/" + "t" * 503).startswith("sha256:")
    # A string shaped like a digest key is hashed too: no token can take another's key.
    assert wait_token_key(wait_token_key(long)) != wait_token_key(long)


@pytest.mark.parametrize("mutate, field, nulled", [
    (lambda e: e["creative"].update(code="HRT\x00"), "creative.code", {"code"}),
    (lambda e: e["creative"].update(locale="\ud800"), "creative.locale", {"locale"}),
    (lambda e: e.update(projectId="p" * 1025), "projectId", {"project_id"}),
    (lambda e: e["fulfillment"].update(storageKey="é" * 600), "fulfillment.storageKey", {"storage_key"}),
    (lambda e: e["facebook"].update(ads=[{"name": "x\x00"}]), "facebook.ads.0.name", set()),
    (lambda e: e["facebook"].update({"k\udc00": 1}), "facebook.'k\\udc00'", set()),
])
def test_an_invalid_job_keeps_only_coordinates_a_store_can_index(
    mutate: Any, field: str, nulled: set[str]
) -> None:
    data = oss()
    mutate(data)
    job = new_job("evt", data, NOW)
    assert job.status == Status.INVALID
    assert job.error is not None and job.error.startswith(f"invalid payload: {field}:")
    for column in ("storage_key", "project_id", "code", "locale"):
        assert (getattr(job, column) is None) == (column in nulled), column


def test_an_expires_at_is_measured_from_receipt() -> None:
    data = oss()  # expires 2026-04-24T01:00:00Z
    expires = datetime(2026, 4, 24, 1, 0, tzinfo=UTC).timestamp()
    assert new_job("evt", data, expires - 24 * 3600).status == Status.QUEUED
    late = new_job("evt", data, expires - 24 * 3600 - 1)
    assert late.status == Status.INVALID and "fulfillment.expiresAt" in (late.error or "")
    assert late.expires_at == expires
    data["fulfillment"]["expiresAt"] = "9999-12-31T23:59:59-23:59"
    far = new_job("evt", data, NOW)
    assert far.status == Status.INVALID and far.expires_at is None  # no reader could show year 10000


@pytest.mark.parametrize("topic", sorted(events.LIFECYCLE_STATUS))
def test_a_lifecycle_topic_on_a_requests_body_changes_nothing(topic: str) -> None:
    incoming = plan("evt_forged", topic, "{}", oss(), NOW)
    assert incoming.lifecycle is None and incoming.job is None
    assert incoming.note is not None and "fulfillment.uploadUrl" in incoming.note


# --- parse_object ---------------------------------------------------------------------------------


def nested(levels: int) -> bytes:
    """An object ``levels`` deep (itself the first), alternating arrays and objects."""
    text = "0"
    for level in range(levels - 1):
        text = f"[{text}]" if level % 2 else f'{{"k": {text}}}'
    return f'{{"a": {text}}}'.encode()


def test_a_body_may_nest_64_levels_and_no_more() -> None:
    assert parse_object(nested(64))[1]["a"]
    with pytest.raises(NotAnObject, match="nested deeper than 64 levels"):
        parse_object(nested(65))


def test_many_brackets_side_by_side_or_inside_strings_are_not_depth() -> None:
    wide = json.dumps({"a": [[] for _ in range(1000)], "b": [{} for _ in range(1000)], "s": "[{" * 100}).encode()
    assert len(parse_object(wide)[1]["a"]) == 1000
    assert parse_object(json.dumps({"s": "[" * 1000}).encode())[1]["s"] == "[" * 1000


def test_nul_and_lone_surrogate_escapes_are_kept_as_received() -> None:
    body = b'{"a": "\\ud800", "b": "\\u0000"}'
    text, data = parse_object(body)
    assert text == body.decode() and data == {"a": "\ud800", "b": "\x00"}


any_text = st.text(st.characters(exclude_categories=()))  # surrogates and NUL included
json_values = st.recursive(any_text, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(any_text, inner, max_size=3), max_leaves=8)


@given(json_values, st.booleans())
def test_only_an_escape_can_carry_a_nul_or_lone_surrogate(value: Any, ascii_only: bool) -> None:
    """What lets plan skip looking for them in a body without ``\\u``: JSON that reaches it can hold
    neither unescaped (control characters are refused in strings, surrogates are not UTF-8)."""
    body = json.dumps({"v": value}, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        text, data = parse_object(body)
    except NotAnObject:
        return
    if events.unsafe_string(data) is not None:
        assert "\\u" in text


def test_a_raw_nul_or_surrogate_in_the_text_is_refused() -> None:
    for body in (b'{"a": "x\x00"}', '{"a": "\ud800"}'.encode("utf-8", "surrogatepass")):
        with pytest.raises(NotAnObject):
            parse_object(body)


def test_nesting_is_read_from_the_text_even_where_a_duplicate_key_replaces_it() -> None:
    """The text is what is stored and read again; the parsed value keeps only the last of two members."""
    body = b'{"a": ' + b"[" * 900 + b"]" * 900 + b', "a": 1}'
    with pytest.raises(NotAnObject, match="nested deeper than 64 levels"):
        parse_object(body)
