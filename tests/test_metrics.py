"""``GET /metrics`` after a scripted run through a real ``fulfiller serve`` process, and what a scrape
costs the store.

The run: a few accepted events, a duplicate, a bad signature, an oversize body
and a body that is not a JSON object; one job completes after its first upload
is held and then answered 503 (so it is retried), one is skipped (no master).
With one worker slot, the second job waits while the first upload hangs, which
is when the queue gauges are checked. Every wait polls with a deadline (the queue
gauges may be a few seconds old: a scrape reuses the store's last answer).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fulfiller import version
from fulfiller.intake.admission import Delivery
from fulfiller.metrics import Metrics
from fulfiller.ops.testevent import signed_headers
from fulfiller.store.base import Pruned, Stats
from fulfiller.store.sqlite import SQLiteStore
from store.builders import request_body
from support.fulfiller_proc import FulfillerProcess, attempts
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

MEDIA = Path(__file__).parent / "media"
SECRET = "metrics-test-signing-secret"
REQUESTED = "video.source_requested"
UNKNOWN_TOPIC = "video.something_new"
MAX_BODY = 8192
TIMEOUT_S = 30

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(proc: FulfillerProcess) -> Samples:
    response = proc.http.get(f"{proc.base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it was never set (a labelled child not yet created)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def wait_for_metrics(proc: FulfillerProcess, predicate: Callable[[Samples], bool], what: str) -> Samples:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        samples = scrape(proc)
        if predicate(samples):
            return samples
        if time.monotonic() > deadline:
            interesting = {k: v for k, v in samples.items() if k[0].startswith("fulfiller_")}
            raise AssertionError(f"timed out waiting for {what}; metrics: {interesting}\n{proc.log_tail()}")
        time.sleep(0.05)


def assert_histogram_consistent(samples: Samples, name: str) -> None:
    """Cumulative buckets never decrease and ``+Inf`` equals ``_count``."""
    buckets = sorted(
        ((float(dict(ls)["le"]), v) for (n, ls), v in samples.items() if n == f"{name}_bucket"),
        key=lambda b: b[0],
    )
    assert buckets, f"{name} has no buckets"
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"{name} buckets decrease: {buckets}"
    assert buckets[-1][0] == float("inf")
    assert buckets[-1][1] == value(samples, f"{name}_count")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[PlatformDouble]:
    with run_platform(tmp_path / "platform") as double:
        yield double


@pytest.fixture
def masters(tmp_path: Path) -> Path:
    root = tmp_path / "masters"
    root.mkdir()
    return root


@pytest.fixture
def proc(tmp_path: Path, masters: Path, platform: PlatformDouble) -> Iterator[FulfillerProcess]:
    config = {
        "receiver": {"secrets": [SECRET], "max_body_bytes": MAX_BODY},
        "worker": {
            "concurrency": 1,  # the second job queues while the first one's upload hangs
            "allow_insecure_http": True,
            "allowed_upload_hosts": ["127.0.0.1"],
            "allowed_callback_hosts": ["127.0.0.1"],
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
        },
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    with FulfillerProcess(tmp_path / "serve", config, secret=SECRET) as p:
        yield p


def post(proc: FulfillerProcess, body: bytes, *, secret: str = SECRET, topic: str = REQUESTED,
         event_id: str | None = None) -> int:
    headers = signed_headers(body, [secret], topic=topic, event_id=event_id or f"evt_{uuid.uuid4().hex}")
    return proc.http.post(f"{proc.base_url}/webhooks/outpost", content=body, headers=headers).status_code


def test_metrics_follow_a_scripted_run(proc: FulfillerProcess, platform: PlatformDouble, masters: Path) -> None:
    master = (MEDIA / "9x16.mp4").read_bytes()
    folder = masters / "MET-A" / "v1" / "en"
    folder.mkdir(parents=True)
    shutil.copyfile(MEDIA / "9x16.mp4", folder / "9x16.mp4")

    before = scrape(proc)
    assert value(before, "fulfiller_build_info", version=version()) == 1
    assert total(before, "fulfiller_deliveries_total") == 0
    assert value(before, "fulfiller_ack_latency_seconds_count") == 0
    assert value(before, "fulfiller_uploaded_bytes_total") == 0
    assert value(before, "fulfiller_oldest_queued_job_age_seconds") == 0

    # Job A (has a master): its first PUT is held, then answered 503, then retried.
    key_a = storage_key("MET-A", "9x16")
    token_a, token_b = new_token(), new_token()
    platform.hang_uploads(1, key=key_a)
    event_a = source_requested("MET-A", aspect="9x16", key=key_a, upload_url=platform.presign(key_a),
                               callback_url=platform.callback_url(token_a))
    id_a = "evt_metrics_a_" + uuid.uuid4().hex[:8]
    assert post(proc, json.dumps(event_a).encode(), event_id=id_a) == 202
    platform.wait_for(lambda s: any(u.outcome == "hung" for u in s.uploads(key_a)), TIMEOUT_S, "A's upload to hang")

    # Job B (no master anywhere): skipped, but only after A frees the single worker slot.
    key_b = storage_key("MET-B", "9x16")
    event_b = source_requested("MET-B", aspect="9x16", key=key_b, upload_url=platform.presign(key_b),
                               callback_url=platform.callback_url(token_b))
    assert post(proc, json.dumps(event_b).encode()) == 202
    assert post(proc, json.dumps(event_a).encode(), event_id=id_a) == 200  # duplicate
    assert post(proc, b'{"anything": true}', topic=UNKNOWN_TOPIC) == 202  # stored, does nothing
    assert post(proc, json.dumps(event_a).encode(), secret="not-the-secret") == 401
    for n in range(3):  # unsigned junk with invented topics: no new series each
        assert post(proc, b"{}", secret="not-the-secret", topic=f"made.up.{n}") == 401
    assert post(proc, b'{"pad": "' + b"x" * MAX_BODY + b'"}') == 413
    assert post(proc, b"[1, 2, 3]") == 400

    job_a = proc.job_for_event(id_a)["id"]
    queued = wait_for_metrics(
        proc, lambda s: (value(s, "fulfiller_jobs", status="running"), value(s, "fulfiller_jobs", status="queued"))
        == (1, 1), "A running and B queued")
    assert 0 < value(queued, "fulfiller_oldest_queued_job_age_seconds") < TIMEOUT_S
    assert total(queued, "fulfiller_jobs_finished_total") == 0
    assert value(queued, "fulfiller_upload_duration_seconds_count") == 0  # A's first try is still in flight
    assert value(queued, "fulfiller_uploaded_bytes_total") == 0

    platform.release()  # the held PUT is answered 503
    done_a = proc.wait_for_job(job_a, timeout=TIMEOUT_S)
    assert done_a["status"] == "completed", done_a
    assert [a["http_status"] for a in attempts(done_a, "upload")] == [503, 200]
    job_b = next(j for j in proc.jobs() if j["creative"]["code"] == "MET-B")["id"]
    done_b = proc.wait_for_job(job_b, timeout=TIMEOUT_S)
    assert done_b["status"] == "skipped", done_b

    # The counter moves just after the store commits the final status, and the gauges follow the store's
    # next answer: poll, don't race.
    after = wait_for_metrics(
        proc, lambda s: total(s, "fulfiller_jobs_finished_total") >= 2 and total(s, "fulfiller_jobs") == 2
        and value(s, "fulfiller_jobs", status="completed") == 1, "2 finished jobs")

    deliveries = {
        (dict(ls)["topic"], dict(ls)["outcome"]): v
        for (n, ls), v in after.items() if n == "fulfiller_deliveries_total"
    }
    assert deliveries == {
        (REQUESTED, "accepted"): 2,
        (REQUESTED, "duplicate"): 1,
        (REQUESTED, "bad_signature"): 1,
        (REQUESTED, "too_large"): 1,
        (REQUESTED, "bad_body"): 1,
        ("other", "accepted"): 1,  # a topic the platform does not document: stored, counted as "other"
        ("other", "bad_signature"): 3,
    }
    assert value(after, "fulfiller_ack_latency_seconds_count") == 10
    assert value(after, "fulfiller_ack_latency_seconds_sum") > 0
    assert_histogram_consistent(after, "fulfiller_ack_latency_seconds")

    assert value(after, "fulfiller_jobs_finished_total", status="completed") == 1
    assert value(after, "fulfiller_jobs_finished_total", status="skipped") == 1
    assert total(after, "fulfiller_jobs_finished_total") == 2

    # Only the try that delivered counts its bytes; both tries are timed.
    assert value(after, "fulfiller_uploaded_bytes_total") == len(master)
    assert platform.stored(key_a).size == len(master)
    assert value(after, "fulfiller_upload_duration_seconds_count") == 2
    assert_histogram_consistent(after, "fulfiller_upload_duration_seconds")
    assert value(after, "fulfiller_retries_total", step="upload") == 1
    assert total(after, "fulfiller_retries_total") == 1

    # A's completion and B's skip: one callback try each.
    assert value(after, "fulfiller_callback_duration_seconds_count") == 2
    assert_histogram_consistent(after, "fulfiller_callback_duration_seconds")
    assert len(platform.callbacks(token_a)) == 1 and len(platform.callbacks(token_b)) == 1

    gauges = {dict(ls)["status"]: v for (n, ls), v in after.items() if n == "fulfiller_jobs"}
    assert gauges["completed"] == 1 and gauges["skipped"] == 1
    assert sum(gauges.values()) == 2, gauges  # queued, running and the rest are 0
    assert value(after, "fulfiller_oldest_queued_job_age_seconds") == 0


# -- what a scrape costs the store ---------------------------------------------------------------


class CountedStore(SQLiteStore):
    """A real store that counts its stats queries, each held at ``gate`` until the test opens it."""

    def __init__(self, url: str):
        super().__init__(url)
        self.queries = 0
        self.gate = asyncio.Event()

    async def stats(self) -> Stats:
        self.queries += 1
        await self.gate.wait()
        return await super().stats()


@pytest.fixture
async def counted(tmp_path: Path) -> AsyncIterator[CountedStore]:
    store = CountedStore(f"sqlite:///{tmp_path / 'state.db'}")
    await store.open()
    yield store  # pytest closes it after the test, whatever its outcome
    await store.close()


async def add_job(store: SQLiteStore, code: str) -> None:
    body = json.dumps(request_body(code)).encode()
    assert await store.ingest(Delivery(f"evt_{code}", REQUESTED, body, time.time()))


async def test_concurrent_scrapes_share_one_stats_query(counted: CountedStore) -> None:
    await add_job(counted, "MET-1")
    metrics = Metrics()
    scrapes = [asyncio.ensure_future(metrics.render(counted)) for _ in range(20)]
    await asyncio.sleep(0)  # one turn of the loop: every scrape has asked, the first query still held
    counted.gate.set()
    pages = await asyncio.gather(*scrapes)
    assert counted.queries == 1
    assert {value(parse(page.decode()), "fulfiller_jobs", status="queued") for page in pages} == {1}


async def test_a_scrape_reuses_the_stats_until_they_are_stats_cache_s_old(counted: CountedStore) -> None:
    counted.gate.set()
    metrics = Metrics(stats_cache_s=3600)
    assert value(parse((await metrics.render(counted)).decode()), "fulfiller_jobs", status="queued") == 0
    await add_job(counted, "MET-2")
    for _ in range(5):
        page = parse((await metrics.render(counted)).decode())
        assert value(page, "fulfiller_jobs", status="queued") == 0  # the cached answer
    assert counted.queries == 1

    metrics.stats_cache_s = 0  # as if the hour had passed
    page = parse((await metrics.render(counted)).decode())
    assert value(page, "fulfiller_jobs", status="queued") == 1
    assert counted.queries == 2


# -- retention --------------------------------------------------------------------------------


async def seed_old_and_new(url: str) -> None:
    """Forty days ago: a request found invalid (a finished job) and an event of another topic; today: an
    invalid request."""
    store = SQLiteStore(url)
    await store.open()
    try:
        old = time.time() - 40 * 86400
        invalid = json.dumps({"projectId": "p", "creative": {}}).encode()
        assert await store.ingest(Delivery("evt-old", REQUESTED, invalid, old))
        assert await store.ingest(Delivery("evt-old-other", UNKNOWN_TOPIC, b'{"a": 1}', old))
        assert await store.ingest(Delivery("evt-new", REQUESTED, invalid, time.time()))
    finally:
        await store.close()


def test_serve_prunes_as_it_starts_and_reports_rows_pruned_and_the_state_size(tmp_path: Path, masters: Path) -> None:
    workdir = tmp_path / "serve"
    workdir.mkdir()
    asyncio.run(seed_old_and_new(f"sqlite:///{workdir / 'fulfiller.db'}"))
    config = {
        "receiver": {"secrets": [SECRET]},
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
        "retention": {"keep_days": 30},
    }
    with FulfillerProcess(workdir, config, secret=SECRET) as proc:
        pruned = wait_for_metrics(proc, lambda s: value(s, "fulfiller_pruned_total", kind="jobs") == 1,
                                  "the prune at start")
        assert value(pruned, "fulfiller_pruned_total", kind="events") == 2  # the job's event, the other topic's
        assert value(pruned, "fulfiller_state_bytes") >= (workdir / "fulfiller.db").stat().st_size > 0
        assert [j["event_id"] for j in proc.jobs()] == ["evt-new"]
        assert '"pruned 1 job(s) and 2 event(s) older than 30 days"' in proc.log_text()


async def test_the_state_size_comes_with_the_stats_and_pruning_counts_its_rows(counted: CountedStore) -> None:
    counted.gate.set()
    metrics = Metrics()
    page = parse((await metrics.render(counted)).decode())
    assert value(page, "fulfiller_state_bytes") >= Path(counted.path).stat().st_size > 0
    assert (value(page, "fulfiller_pruned_total", kind="jobs"), value(page, "fulfiller_pruned_total", kind="events")) \
        == (0, 0)  # both series exist before anything is pruned
    metrics.count_pruned(Pruned(jobs=3, events=5, batches=1, state_bytes=4096))
    metrics.count_pruned(Pruned(jobs=1, events=1, batches=1, state_bytes=2048))
    page = parse(generate_latest(metrics.registry).decode())
    assert value(page, "fulfiller_pruned_total", kind="jobs") == 4
    assert value(page, "fulfiller_pruned_total", kind="events") == 6
    assert value(page, "fulfiller_state_bytes") == 2048
    assert counted.queries == 1  # the size came with the stats: no query of its own
