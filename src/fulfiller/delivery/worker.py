"""The worker loop: claim a job, hold its lease while the engine runs it, repeat.

A claim is a lease, renewed while the job runs; a worker that dies stops
renewing and another takes the job once the lease lapses, and a worker that
cannot renew for the lease's length stops its work on the job. A renewal also
brings an operator's skip: the try in flight stops at once and the job goes back
to the queue to send it. Jobs waiting between tries are in the queue, not in a
worker; an idle worker wakes when work is queued or the earliest waiting job is
due. On shutdown the loop stops claiming, gives the tries in flight a grace
period, then releases what is left back to the queue.

No job stops the loop: one that cannot be loaded, or whose run raises, ends
``failed`` and the loop goes on. Should the loop stop anyway, ``stopped`` says
so (``/readyz`` answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from enum import StrEnum

import httpx

from fulfiller.config import Config
from fulfiller.delivery.engine import Engine
from fulfiller.delivery.resolve import Catalogs
from fulfiller.delivery.transfer import Uploader
from fulfiller.jobs import Job, Status, internal_error
from fulfiller.metrics import Metrics
from fulfiller.store import Store, StoreUnavailable, open_store
from fulfiller.store.base import Lease, UnreadableJob

log = logging.getLogger("fulfiller.worker")

# The longest time between two renewals of a lease: how soon an operator's skip reaches a running try.
RENEW_EVERY_S = 1.0


class _Stop(StrEnum):
    """Why a worker cut a try short, as its log line says."""

    SHUTDOWN = "shutdown grace over"
    SKIP = "an operator skips the job"
    LOST = "job lease lost"
    UNRENEWED = "job lease not renewed for lease_s"


class WorkerPool:
    """Up to ``worker.concurrency`` jobs at once in this process."""

    def __init__(self, config: Config, store: Store, metrics: Metrics):
        self.config = config
        self.store = store
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        w = config.worker
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(w.http_timeout_s),
            follow_redirects=False,  # a redirect could lead outside the allow-lists
            limits=httpx.Limits(max_connections=w.concurrency * 2, max_keepalive_connections=w.concurrency),
        )
        self.uploader = Uploader(w.http_timeout_s, max_connections=w.concurrency)
        self.catalogs = Catalogs(config)
        self.engine = Engine(config, store, metrics, self.catalogs, self.client, self.uploader)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self.stopped = False  # the claim loop has ended (shut down, or crashed): this pool starts no job

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until ``stop`` is set, then drain."""
        log.info("worker started", extra={"worker": self.owner})
        try:
            await self._claim_loop(stop)
        except Exception:
            log.critical("worker loop crashed: this process starts no more jobs", exc_info=True,
                         extra={"worker": self.owner})
            raise
        finally:
            self.stopped = True
            await self._drain()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        w = self.config.worker
        while not stop.is_set():
            if len(self._tasks) >= w.concurrency:
                await _first(stop.wait(), self._slot_freed.wait())
                self._slot_freed.clear()
                continue
            try:
                job = await self.store.claim(self.owner, w.lease_s, negative_acks=w.negative_ack_failures)
            except UnreadableJob as exc:
                await self._fail_unreadable(exc)
                continue
            except Exception as exc:
                # No job is named: the store (or the claim itself) fails, not one job. Wait, then try again.
                log.error("cannot claim work: %s", exc, exc_info=not isinstance(exc, StoreUnavailable),
                          extra={"worker": self.owner})
                await _first(stop.wait(), asyncio.sleep(w.poll_interval_s))
                continue
            if job is None:
                await _first(stop.wait(), self.store.wait_for_work(w.poll_interval_s))
                continue
            if job.id in self._tasks:
                # Our own lease lapsed while we still run it (a stalled loop): the claim
                # renewed it; starting it twice would upload twice.
                continue
            self._tasks[job.id] = asyncio.create_task(self._hold(job), name=f"job {job.id}")

    async def _fail_unreadable(self, exc: UnreadableJob) -> None:
        """End a claimed job that cannot be loaded ``failed``, in a write of its own."""
        extra = {"job_id": exc.job_id, "worker": self.owner}
        log.error("job cannot be loaded; it ends failed", exc_info=exc.cause, extra=extra)
        try:
            failed = await self.store.finish(exc.job_id, self.owner, Status.FAILED, {"error": internal_error(exc.cause)})
        except Exception as err:  # its lease lapses, and the claim that takes it next counts a crash
            log.error("cannot end job %s failed: %s", exc.job_id, err, extra=extra)
            return
        if failed:
            self.metrics.jobs_finished.labels(Status.FAILED).inc()

    async def _hold(self, job: Job) -> None:
        """Run ``job`` under its lease. A try cut short (shutdown grace over, an operator's skip, the lease
        lost or not renewed for ``lease_s``) ends in the engine as a ``cancelled`` attempt; the job then goes
        back to the queue (shutdown, skip) or is left to whoever holds it now."""
        extra = {"job_id": job.id, "event_id": job.event_id, "worker": self.owner}
        work = asyncio.create_task(self.engine.run(job, self.owner), name=f"run {job.id}")
        stopped: list[_Stop] = []  # why the work was cancelled, when it was
        watch = asyncio.create_task(self._watch(job, work, stopped))
        try:
            await asyncio.wait([work])
        except asyncio.CancelledError:  # the shutdown grace is over
            stopped.append(_Stop.SHUTDOWN)
            work.cancel()
            await asyncio.wait([work])
        finally:
            watch.cancel()
        try:
            if work.cancelled():
                await self._stopped(job, stopped[0] if stopped else _Stop.SHUTDOWN, extra)
            elif isinstance(work.exception(), StoreUnavailable):
                # Its lease will lapse and a worker will take it again once the store is back.
                log.error("store unavailable during job: %s", work.exception(), extra=extra)
            elif work.exception() is not None:
                # The engine ends a job on any error but the store's; this is its final write failing.
                log.error("job crashed; it will be taken again when its lease lapses", exc_info=work.exception(),
                          extra=extra)
        finally:
            self._tasks.pop(job.id, None)
            self._slot_freed.set()

    async def _stopped(self, job: Job, why: _Stop, extra: dict[str, str]) -> None:
        if why in (_Stop.LOST, _Stop.UNRENEWED):
            log.warning("%s; stopped working on the job (another worker may have it)", why.value, extra=extra)
            return
        try:
            released = await asyncio.shield(self.store.release(job.id, self.owner))
        except StoreUnavailable as exc:
            log.error("cannot give the job back (%s); it runs again when its lease lapses", exc, extra=extra)
            return
        if released:
            log.info("job released %s", "at shutdown" if why == _Stop.SHUTDOWN else "to send an operator's skip",
                     extra=extra)

    async def _watch(self, job: Job, work: asyncio.Task[Status], stopped: list[_Stop]) -> None:
        """Renew the lease while ``work`` runs, often enough that an operator's skip reaches the try within a
        second; cancel the work when the job is no longer ours, when a skip is asked for, or when no renewal
        has succeeded for ``lease_s`` (the lease has lapsed by now: another worker may take the job)."""
        lease_s = self.config.worker.lease_s
        every = min(lease_s / 3, RENEW_EVERY_S)
        held_at = time.monotonic()
        while not work.done():
            await asyncio.sleep(every)
            left = lease_s - (time.monotonic() - held_at)
            try:
                lease = await asyncio.wait_for(self.store.renew(job.id, self.owner, lease_s), max(left, 0.001))
            except Exception as exc:  # the store failing or not answering in time: the lease may lapse
                if time.monotonic() - held_at < lease_s:
                    if left >= lease_s - every * 1.5:  # the first failure of a stretch: one line, not one a second
                        log.warning("cannot renew the lease: %s", str(exc) or type(exc).__name__,
                                    extra={"job_id": job.id, "worker": self.owner})
                    continue
                stopped.append(_Stop.UNRENEWED)
            else:
                if lease == Lease.HELD:
                    held_at = time.monotonic()
                    continue
                stopped.append(_Stop.SKIP if lease == Lease.SKIP_REQUESTED else _Stop.LOST)
            work.cancel()
            return

    async def _drain(self) -> None:
        self._stopping = True
        grace = self.config.worker.shutdown_grace_s
        if self._tasks:
            log.info("waiting up to %ss for %d job(s)", grace, len(self._tasks), extra={"worker": self.owner})
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.client.aclose()
        self.uploader.close()
        await self.catalogs.aclose()


async def _first(*aws: object) -> None:
    """Wait until the first of ``aws`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]  # type: ignore[arg-type]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def worker_service(config: Config) -> Callable[[Store, Metrics], contextlib.AbstractAsyncContextManager[WorkerPool]]:
    """Workers as a service of the web app (``fulfiller serve``): started and stopped with it; the pool
    it yields says when its loop has stopped."""

    @contextlib.asynccontextmanager
    async def service(store: Store, metrics: Metrics) -> AsyncIterator[WorkerPool]:
        stop = asyncio.Event()
        pool = WorkerPool(config, store, metrics)
        task = asyncio.create_task(pool.run(stop))
        try:
            yield pool
        finally:
            stop.set()
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # a loop that crashed said so when it did (run logs it): shutdown goes on

    return service


async def run_workers(config: Config) -> None:
    """``fulfiller worker``: workers only, until SIGTERM or SIGINT."""
    store = open_store(config.state, serving=True)
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await WorkerPool(config, store, Metrics()).run(stop)
    finally:
        await store.close()
