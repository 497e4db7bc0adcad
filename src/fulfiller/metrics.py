"""Prometheus metrics, in a registry per app so several apps can live in one test process.

The queue gauges come from one query over all jobs (``Store.stats``, which also
gives the state's size): a scrape reuses its answer for ``stats_cache_s``, and
scrapes that arrive while it runs wait for that one, so scrapers never add load to
the store (nor to the threads its reads share with the catalogs).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from fulfiller import version
from fulfiller.events import TOPICS
from fulfiller.jobs import Status
from fulfiller.store.base import Pruned, Stats, Store, StoreUnavailable

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_TRANSFER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric the product exports."""

    def __init__(self, *, stats_cache_s: float = 5.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("fulfiller_build_info", "This build (always 1)", ["version"], registry=r).labels(version()).set(1)
        self.deliveries = Counter(
            "fulfiller_deliveries_total", "Webhook deliveries received, by topic and outcome",
            ["topic", "outcome"], registry=r,
        )
        self.ack_latency = Histogram(
            "fulfiller_ack_latency_seconds", "Time from request start to the receiver's answer",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.jobs_finished = Counter(
            "fulfiller_jobs_finished_total", "Jobs that reached a final status in this process",
            ["status"], registry=r,
        )
        self.jobs = Gauge("fulfiller_jobs", "Jobs in the store by status", ["status"], registry=r)
        self.oldest_queued = Gauge(
            "fulfiller_oldest_queued_job_age_seconds",
            "Age of the oldest queued job that is due, counted from when it fell due (0 when none)", registry=r
        )
        self.bytes_uploaded = Counter(
            "fulfiller_uploaded_bytes_total", "Master bytes uploaded successfully", registry=r
        )
        self.upload_duration = Histogram(
            "fulfiller_upload_duration_seconds", "Duration of each upload try", buckets=_TRANSFER_BUCKETS, registry=r
        )
        self.callback_duration = Histogram(
            "fulfiller_callback_duration_seconds", "Duration of each callback try", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("fulfiller_retries_total", "Retried tries, by step", ["step"], registry=r)
        self.pruned = Counter(
            "fulfiller_pruned_total", "Rows retention deleted in this process: jobs (with their attempts) and events",
            ["kind"], registry=r,
        )
        for kind in ("jobs", "events"):
            self.pruned.labels(kind)
        self.state_bytes = Gauge(
            "fulfiller_state_bytes", "Size of the state on disk: the SQLite file and its WAL, or the PostgreSQL"
            " database", registry=r,
        )
        self.refused = Counter(
            "fulfiller_deliveries_refused_total", "Deliveries refused, by reason: the signature doctor's code when"
            " it diagnosed one, else the code the sender was answered", ["reason"], registry=r,
        )
        self._delivered: dict[tuple[str, str], Counter] = {}
        self.stats_cache_s = stats_cache_s
        self._stats: asyncio.Future[Stats] | None = None  # the last query, or the one running
        self._stats_asked_at = 0.0

    def delivery(self, topic: str, outcome: str, ack_s: float) -> None:
        """Count one delivery and its ack latency (once per request: the labelled child is looked up once).

        The topic comes from a header, read before the signature is checked: any topic
        but the platform's is counted as "other" (or "unknown" when absent), so requests
        cannot mint a new time series each.
        """
        topic = topic if topic in TOPICS else "other" if topic else "unknown"
        child = self._delivered.get((topic, outcome))
        if child is None:
            child = self._delivered[(topic, outcome)] = self.deliveries.labels(topic, outcome)
        child.inc()
        self.ack_latency.observe(ack_s)

    def count_refused(self, reason: str) -> None:
        """Count one refused delivery; reasons are the receiver's and the doctor's codes, a fixed set."""
        self.refused.labels(reason).inc()

    def count_pruned(self, pruned: Pruned) -> None:
        """Count what a prune deleted, and the state's size it found after."""
        self.pruned.labels("jobs").inc(pruned.jobs)
        self.pruned.labels("events").inc(pruned.events)
        if pruned.state_bytes is not None:
            self.state_bytes.set(pruned.state_bytes)

    async def render(self, store: Store) -> bytes:
        """The exposition text, with queue gauges from the store's stats at most ``stats_cache_s`` old."""
        try:
            stats = await self._store_stats(store)
        except StoreUnavailable:
            # Counters still matter when the store is down; the gauges keep their last values.
            return generate_latest(self.registry)
        for status in Status:
            self.jobs.labels(status).set(stats.by_status.get(status, 0))
        self.oldest_queued.set(max(0.0, time.time() - stats.oldest_queued_at) if stats.oldest_queued_at else 0.0)
        if stats.state_bytes is not None:
            self.state_bytes.set(stats.state_bytes)
        return generate_latest(self.registry)

    async def _store_stats(self, store: Store) -> Stats:
        """The last query's answer while it is fresh (a failure too: a store that is down is not asked
        again at once), else a new query, shared by every scrape that arrives while it runs."""
        now = time.monotonic()
        last = self._stats
        if last is None or last.get_loop() is not asyncio.get_running_loop() or (
                last.done() and now - self._stats_asked_at >= self.stats_cache_s):
            self._stats_asked_at = now
            self._stats = asyncio.ensure_future(store.stats())
            self._stats.add_done_callback(_retrieved)
        return await asyncio.shield(self._stats)  # a scraper that hangs up does not cancel the others' query


def _retrieved(query: asyncio.Future[Stats]) -> None:
    if not query.cancelled():
        query.exception()  # each scrape that awaits it has it; retrieved so one nobody awaited is not reported
