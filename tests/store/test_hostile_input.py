"""The Store contract under input a compromised or buggy sender can craft, on SQLite and a real PostgreSQL.

Every delivery goes in as raw bytes through ``Store.ingest`` (on SQLite: the ingest
process), as the receiver hands it over. Nothing a signed body holds may become a
store error (the receiver's 503, redelivered forever): NULs and lone surrogates,
fields past an index row's size, dates past year 9999, and a wait token already held.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from fulfiller.intake.admission import Delivery, wait_token_key
from fulfiller.jobs import Job, Status
from fulfiller.store import Store
from fulfiller.store.schema import coords_key
from store.builders import PROJECT, REQUESTED, TIMEOUT, callback_url, request_body


def noise(length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    """Text that does not compress: PostgreSQL compresses a long index value, and "k" * 3000 fits."""
    return "".join(random.Random(length).choices(alphabet, k=length))


LONG = noise(3000)  # past PostgreSQL's B-tree row limit (~2.7 KB) on its own
CJK = "".join(map(chr, range(0x4E00, 0x9FFF)))  # three bytes each in UTF-8, six characters each as JSON escapes
INDEXED = ("storage_key", "project_id", "code", "locale")


async def ingest(store: Store, body: dict[str, Any], topic: str = REQUESTED, event_id: str | None = None) -> bool:
    return await store.ingest(Delivery(event_id or f"evt-{uuid.uuid4().hex}", topic, json.dumps(body).encode(),
                                       time.time()))


async def job_of(store: Store, event_id: str) -> Job:
    found = [j for j in await store.list_jobs(limit=500) if j.event_id == event_id]
    assert len(found) == 1, found
    return found[0]


async def event_ids(store: Store) -> set[str]:
    read = store.read  # type: ignore[attr-defined]
    return {row[0] for row in await read(lambda cur: cur.execute("SELECT event_id FROM events").fetchall())}


def creative(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["creative"].update({field: value})


def fulfillment(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["fulfillment"].update({field: value})


@pytest.mark.parametrize("mutate, field, unsafe", [
    (creative("code", "HRT\x00-1"), "creative.code", {"code"}),
    (creative("code", "HRT-\ud800"), "creative.code", {"code"}),
    (creative("code", LONG), "creative.code", {"code"}),
    (creative("code", "é" * 513), "creative.code", {"code"}),  # 513 characters, 1,026 bytes
    (creative("locale", LONG), "creative.locale", {"locale"}),
    (creative("locale", "en\udc00"), "creative.locale", {"locale"}),
    (creative("kind", LONG), "creative.kind", set()),
    (lambda body: body.update(projectId=LONG), "projectId", {"project_id"}),
    (lambda body: body.update(projectSlug="s\x00"), "projectSlug", set()),
    (fulfillment("storageKey", LONG), "fulfillment.storageKey", {"storage_key"}),
    (fulfillment("storageKey", "fb-external/\x00"), "fulfillment.storageKey", {"storage_key"}),
    (fulfillment("expiresAt", "9999-12-31T23:59:59-23:59"), "fulfillment.expiresAt", set()),
    (lambda body: body.update(facebook={"ads": [{"name": "ad \ud83d"}]}), "facebook.ads.0.name", set()),
])
async def test_a_request_with_unstorable_fields_is_an_invalid_job_that_indexes_none_of_them(
    store: Store, mutate: Callable[[dict[str, Any]], None], field: str, unsafe: set[str]
) -> None:
    body = request_body("HRT-1")
    mutate(body)
    assert await ingest(store, body, event_id="evt-hostile") is True
    job = await job_of(store, "evt-hostile")
    assert job.status == Status.INVALID
    assert job.error is not None and field in job.error
    for column in INDEXED:  # kept when safe, so operators can still find the job; never an unsafe value
        assert (getattr(job, column) is None) == (column in unsafe), column
    assert job.expires_at is None or job.expires_at < 253402300800  # 10000-01-01T00:00:00Z
    assert await store.claim("w", 60) is None


async def test_lifecycle_events_with_unstorable_locators_are_kept_and_change_nothing(store: Store) -> None:
    body = request_body("HRT-1")
    assert await ingest(store, body, event_id="evt-req") is True
    coords = {"projectId": PROJECT, "creative": {"code": "HRT-1", "variation": 2, "locale": "en"}}
    for follow in (
        {"storageKey": LONG},
        {"storageKey": "fb-external/\x00"},
        {"fulfillment": {"storageKey": "\udfff"}},
        {**coords, "creative": {**coords["creative"], "code": "HRT-1\x00"}},
        {**coords, "creative": {**coords["creative"], "locale": LONG}},
        {**coords, "projectId": "\ud800"},
    ):
        assert await ingest(store, follow, TIMEOUT) is True
    assert (await job_of(store, "evt-req")).status == Status.QUEUED
    # An unusable storage key counts as absent: the coordinates still find the job, and an unusable reason
    # is dropped rather than stored.
    assert await ingest(store, {**coords, "storageKey": LONG, "reason": "r\x00"}, TIMEOUT) is True
    job = await job_of(store, "evt-req")
    assert (job.status, job.lifecycle_reason) == (Status.TIMED_OUT, None)


async def test_long_coordinates_still_match_and_fit_every_index(store: Store) -> None:
    # Each field at the limit: their JSON together (non-ASCII escaped) is far past an index row's size.
    code, locale, project = noise(341, CJK), noise(340, CJK), noise(1024)
    lifecycle = {"projectId": project, "creative": {"code": code, "variation": 2, "locale": locale}}
    assert await ingest(store, lifecycle, TIMEOUT, "evt-early") is True  # before its request: kept, pending
    request = request_body(code, locale=locale, key="k" * 1024)
    request["projectId"] = project
    assert await ingest(store, request, event_id="evt-req") is True
    job = await job_of(store, "evt-req")
    assert (job.status, job.code, job.locale, job.project_id) == (Status.TIMED_OUT, code, locale, project)
    # And a follow-up after its request finds it the same way.
    second = request_body(code, locale=locale, variation=3, key="j" * 1024)
    second["projectId"] = project
    assert await ingest(store, second, event_id="evt-req-2") is True
    lifecycle["creative"]["variation"] = 3
    assert await ingest(store, lifecycle, "video.source_fulfilled") is True
    assert (await job_of(store, "evt-req-2")).status == Status.FULFILLED


def test_coords_key_keeps_short_keys_as_they_were_stored_and_digests_long_ones() -> None:
    assert coords_key("p", "HRT-1", 2, "en") == json.dumps(["p", "HRT-1", 2, "en"])
    long = coords_key("p" * 1024, "é" * 512, 2, "ü" * 512)
    assert long.startswith("sha256:") and len(long) == 71
    assert long == coords_key("p" * 1024, "é" * 512, 2, "ü" * 512)
    assert long != coords_key("p" * 1024, "é" * 512, 3, "ü" * 512)
    assert len(coords_key("p" * 100, "HRT-1", 2, "en")) < 200  # a readable key for any usual one


# -- the wait token ---------------------------------------------------------------------------------


async def test_a_request_repeating_a_held_wait_token_is_a_duplicate_whatever_its_event_id(store: Store) -> None:
    token = callback_url()
    assert await ingest(store, request_body("HRT-1", callback=token), event_id="evt-first") is True
    job = await job_of(store, "evt-first")
    assert job.callback_key == wait_token_key(token)
    # The same body under a fresh id, another body with the same token, an invalid one: nothing new.
    assert await ingest(store, request_body("HRT-1", callback=token), event_id="evt-replay") is False
    assert await ingest(store, request_body("HRT-2", callback=token), event_id="evt-other") is False
    broken = request_body("HRT-3", callback=token)
    del broken["creative"]["kind"]
    assert await ingest(store, broken, event_id="evt-broken") is False
    assert await event_ids(store) == {"evt-first"}
    assert [j.event_id for j in await store.list_jobs()] == ["evt-first"]


async def test_an_invalid_request_holds_its_wait_token_too(store: Store) -> None:
    token = callback_url()
    broken = request_body("HRT-1", callback=token)
    broken["creative"]["code"] = "\x00"
    assert await ingest(store, broken, event_id="evt-1") is True
    assert await ingest(store, broken, event_id="evt-2") is False
    # Requests without a wait token never clash with each other.
    for n in range(3):
        assert await ingest(store, {"projectId": PROJECT}, event_id=f"evt-none-{n}") is True
    listed = {j.event_id: j for j in await store.list_jobs()}
    assert set(listed) == {"evt-1", "evt-none-0", "evt-none-1", "evt-none-2"}
    assert listed["evt-none-0"].callback_key is None


async def test_wait_tokens_are_deduplicated_within_a_commit_and_against_the_table(store: Store) -> None:
    held, shared = callback_url(), callback_url()
    assert await ingest(store, request_body("HRT-0", callback=held), event_id="evt-held") is True
    bodies = [request_body(f"HRT-{n}") for n in range(1, 11)]
    bodies[3]["fulfillment"]["completeCallbackUrl"] = held  # held by a stored job
    for n in (5, 6, 8):
        bodies[n]["fulfillment"]["completeCallbackUrl"] = shared  # the first of these in the batch wins
    del bodies[8]["creative"]["kind"]
    # Sent together, they share commits (SQLite stores such a batch with multi-row statements).
    results = await asyncio.gather(*(ingest(store, body, event_id=f"evt-{n}") for n, body in enumerate(bodies)))
    assert [n for n, stored in enumerate(results) if not stored] == [3, 6, 8]
    listed = {j.event_id: j for j in await store.list_jobs(limit=100)}
    assert set(listed) == {"evt-held", *(f"evt-{n}" for n in (0, 1, 2, 4, 5, 7, 9))}
    assert await event_ids(store) == set(listed)
    assert listed["evt-5"].callback_key == wait_token_key(shared)


async def test_many_deliveries_of_one_wait_token_at_once_make_one_job(store: Store) -> None:
    body = request_body("HRT-1")
    results = await asyncio.gather(*(ingest(store, body, event_id=f"evt-{n}") for n in range(40)))
    assert sorted(results) == [False] * 39 + [True]
    assert len(await store.list_jobs()) == 1
    assert len(await event_ids(store)) == 1
