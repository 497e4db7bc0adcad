"""The store interface: what the receiver, the workers and the admin surface need from state.

Two implementations share it (SQLite for one process, PostgreSQL for fleets).
The promise that matters most: ``ingest`` returns only after the event, and
the job it creates, are committed together.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fulfiller.intake.admission import Delivery, IncomingEvent, log_ingested, plan_delivery
from fulfiller.jobs import Attempt, Job


class StoreUnavailable(Exception):
    """The store cannot answer or commit right now (the receiver says 503 so the sender retries)."""


class UnreadableJob(Exception):
    """A claim took a job whose stored row does not read back as a Job (its payload does not decode):
    the job's fault, not the store's. The claimer holds its lease and ends it."""

    def __init__(self, job_id: str, cause: Exception):
        super().__init__(f"job {job_id} cannot be read: {type(cause).__name__}: {cause}")
        self.job_id = job_id
        self.cause = cause


@dataclass
class Stats:
    """What the metrics endpoint reports about the queue. ``oldest_queued_at``: since when the longest-waiting
    job that is due has been due (its creation, or the end of its wait between tries); jobs still waiting
    between tries are not late."""

    by_status: dict[str, int] = field(default_factory=dict)
    oldest_queued_at: float | None = None
    state_bytes: int | None = None  # the state's size on disk (``fulfiller_state_bytes``)


# Jobs (with their attempts and events), or events, a prune deletes per transaction: intake, which needs the
# same write lock on SQLite, waits at most one such transaction behind it.
PRUNE_BATCH = 500


@dataclass(frozen=True)
class Pruned:
    """What a prune deleted (or, a dry run, would delete): ``jobs`` with their attempts, ``events`` (the jobs'
    own and other topics'), in ``batches`` transactions; ``state_bytes``: the state's size after it."""

    jobs: int = 0
    events: int = 0
    batches: int = 0
    state_bytes: int | None = None


class Lease(StrEnum):
    """What a renewal found: the job is still ours, ours but an operator asked to skip it, or no longer ours."""

    HELD = "held"
    SKIP_REQUESTED = "skip_requested"
    LOST = "lost"


class Requeue(StrEnum):
    """What became of an operator's rerun or skip: queued, or why it was refused."""

    QUEUED = "queued"
    NOT_FOUND = "not_found"
    IS_RUNNING = "is_running"
    PAST_DEADLINE = "past_deadline"
    NOT_RERUNNABLE = "not_rerunnable"
    ALREADY_CLOSED = "already_closed"  # skip asked for a job whose wait token is already answered


# Why a rerun or skip was refused, as operators read it in the admin API, the console and the CLI alike.
REFUSALS = {
    Requeue.NOT_FOUND: "no such job",
    Requeue.IS_RUNNING: "the job is running; wait for it to finish, or skip it",
    Requeue.PAST_DEADLINE: "the job's deadline (expiresAt) has passed; the platform falls back to manual upload",
    Requeue.NOT_RERUNNABLE: "an invalid payload cannot be rerun; the platform must send a new event",
    Requeue.ALREADY_CLOSED: ("only a queued or failed job can be skipped (or a running one: its try stops);"
                             " this one's request is already answered"),
}

# A job whose worker went away while holding it (a crash, a lease it could not renew) this many
# times ends ``failed`` instead of being claimed again: it may be what takes workers down.
MAX_CRASHES = 3
CRASHED = f"crashed {MAX_CRASHES} times"


class Store(ABC):
    """Durable state for events, jobs and attempts."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Prove the store can commit a write now; raise StoreUnavailable otherwise."""

    @abstractmethod
    async def ingest_event(self, event: IncomingEvent) -> bool:
        """Store the event and its effects in one transaction: True if new, False for a duplicate id."""

    async def ingest(self, delivery: Delivery) -> bool:
        """Store a verified delivery: plan it (``admission.plan_delivery``, which raises NotAnObject),
        commit it (``ingest_event``) and log its line (``admission.log_ingested``).

        A backend may do both where it commits, off the event loop (SQLiteStore does).
        """
        event = plan_delivery(delivery)
        stored = await self.ingest_event(event)
        log_ingested(event, stored)
        return stored

    @abstractmethod
    async def claim(self, owner: str, lease_s: float, *, negative_acks: bool = False) -> Job | None:
        """Take the oldest runnable job (queued, or running with a lapsed lease) for ``owner``.

        Taking a job whose lease lapsed counts a crash; a job at MAX_CRASHES ends ``failed`` (CRASHED)
        and is passed over. Raises UnreadableJob when the job taken cannot be loaded.

        With ``negative_acks`` (``worker.negative_ack_failures``), when nothing is runnable it takes a job
        found ``invalid`` at intake that no worker took yet, before its deadline, leased and still
        ``invalid``: the worker only sends its negative-ack.
        """

    @abstractmethod
    async def renew(self, job_id: str, owner: str, lease_s: float) -> Lease:
        """Extend the lease (by the store's clock); LOST when the job is no longer ours (lease lapsed and taken,
        or closed by an event), SKIP_REQUESTED when an operator asked to skip it."""

    @abstractmethod
    async def add_attempt(self, job_id: str, attempt: Attempt) -> None: ...

    @abstractmethod
    async def update(self, job_id: str, owner: str, fields: dict[str, Any]) -> bool:
        """Record progress on a job we hold."""

    @abstractmethod
    async def finish(self, job_id: str, owner: str, status: str, fields: dict[str, Any]) -> bool:
        """Move a job we hold to a final status; False if it is no longer ours."""

    @abstractmethod
    async def release(self, job_id: str, owner: str, retry_in: float | None = None) -> bool:
        """Give a job we hold back to the queue: due at once (shutdown, a skip to send), or, after a transient
        failure, due ``retry_in`` seconds from now by the store's clock, its ``retries`` counted.
        False if it is no longer ours."""

    @abstractmethod
    async def get_job(self, job_id: str) -> Job | None:
        """One job with its attempts."""

    @abstractmethod
    async def list_jobs(
        self, status: str | None = None, code: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job]:
        """Jobs newest first, optionally by status and by a substring of the creative code."""

    @abstractmethod
    async def requeue(self, job_id: str, skip_reason: str | None = None) -> Requeue:
        """Queue a job again (rerun, or an operator's skip), or say why not.

        A rerun makes the job due at once and starts it over (it uploads again). A skip of a queued or failed
        job does the same with the skip to send; a skip of a running job is recorded on it, and the worker
        holding it learns so at its next renewal (``Lease.SKIP_REQUESTED``), stops the try and gives it back.
        """

    @abstractmethod
    async def stats(self) -> Stats: ...

    async def prune(self, older_than_s: float, *, now: float | None = None, batch: int = PRUNE_BATCH,
                    dry_run: bool = False) -> Pruned | None:
        """Delete what retention no longer keeps: finished jobs (every status but queued and running) whose
        ``updated_at`` (when they finished, or were last changed) is more than ``older_than_s`` before ``now``
        (default: the current time), with their attempts and events, and the events of other topics (they have
        no job) received before then. Each transaction deletes at most ``batch`` jobs or ``batch`` events.

        An event id deleted is a new event when delivered again; until then it stays a duplicate. None when
        another process is pruning the same state (PostgreSQL: it holds the advisory lock); ``dry_run`` counts
        what would go and deletes nothing.
        """
        return await self._prune((time.time() if now is None else now) - older_than_s, batch, dry_run)

    @abstractmethod
    async def _prune(self, cutoff: float, batch: int, dry_run: bool) -> Pruned | None:
        """``prune``, of what changed before ``cutoff`` (epoch seconds)."""

    async def wait_for_work(self, timeout: float) -> None:
        """Sleep until work may be available; stores that can be notified return early."""
        await asyncio.sleep(timeout)
