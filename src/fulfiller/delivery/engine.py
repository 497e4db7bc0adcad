"""One run of a job: resolve the master, stream it, complete the wait token.

Each step returns what it got, the ``Ending`` that closes the job, or a ``Retry``
when it failed transiently, so a run reads top to bottom. A run makes one try of
each step: after a transient failure the job goes back to the queue with a
not-before time (backoff with jitter, inside the job's deadline) and a later run
starts over from resolve, so a replaced or moved master is found again; only a
callback left to send once the upload is done (or the skip chosen) is kept on
the job, and the next run sends it as it is. Answers that retrying cannot change (403 on the upload, 4xx on the
callback, a catalog's permanent refusal) end the job ``failed`` with the reason
an operator needs. Every try is kept as an attempt, a cancelled one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable
from fulfiller.config import Config
from fulfiller.delivery.callback import callback_target, completion_body, failure_body, post_callback, skip_body
from fulfiller.delivery.resolve import Catalogs, Found, NotFound, find_master
from fulfiller.delivery.transfer import ChecksumMismatch, Delivered, Refused, SizeMismatch, Uploader, upload_target
from fulfiller.events import InvalidPayload, SourceRequest, parse_source_request
from fulfiller.hosts import HostNotAllowed, Target, UnsafeUrl, check_url
from fulfiller.jobs import Attempt, Job, Status, internal_error
from fulfiller.metrics import Metrics
from fulfiller.redact import redact_text
from fulfiller.retry import Transient, next_try
from fulfiller.store.base import Store, StoreUnavailable

log = logging.getLogger("fulfiller.engine")
T = TypeVar("T")

# Outcomes an operator must look at: logged as warnings, the others as info.
_ALARMING = frozenset({Status.FAILED, Status.EXPIRED, Status.INVALID})
CANCELLED = "cancelled"  # the error of a try cut short (shutdown, lease lost, skipped by an operator)


@dataclass(frozen=True)
class Ending:
    """How a run ends: the job's final status and the reasons recorded with it."""

    status: Status
    error: str | None = None
    skip_reason: str | None = None


@dataclass(frozen=True)
class Retry:
    """A step failed transiently: the job waits in the queue and tries again. ``keep``: fields recorded on
    the job first, for the next run (the callback to send as it is)."""

    step: str
    failure: Transient
    keep: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Runs jobs; shared by all of a process's workers."""

    def __init__(self, config: Config, store: Store, metrics: Metrics, catalogs: Catalogs, client: httpx.AsyncClient,
                 uploader: Uploader):
        self.config = config
        self.store = store
        self.metrics = metrics
        self.catalogs = catalogs
        self.client = client  # the callbacks
        self.uploader = uploader

    async def run(self, job: Job, owner: str) -> Status:
        """Run a claimed job once: to a final status, or back to the queue to try again later (``queued``).

        Any exception, whatever raised it, ends the job ``failed`` with ``internal error: ...`` and a
        logged traceback (one job never stops a worker); but the store's failures and a cancellation
        propagate, and the job is left to its lease.
        """
        ctx = _JobContext(self, job, owner)
        try:
            outcome = await self._run_steps(ctx)
        except StoreUnavailable:
            raise  # the store's fault, not the job's: its lease lapses and it runs again
        except Exception as exc:
            log.exception("internal error; the job ends failed", extra=ctx.log_extra)
            outcome = Ending(Status.FAILED, error=internal_error(exc))
        if isinstance(outcome, Retry):
            later = await ctx.requeue(outcome)
            if later is None:
                return Status.QUEUED
            outcome = later
        if outcome.status in (Status.FAILED, Status.INVALID) and self.config.worker.negative_ack_failures:
            outcome = await self._negative_ack(ctx, outcome)
        return await ctx.finish(outcome)

    async def _run_steps(self, ctx: _JobContext) -> Ending | Retry:
        job, worker = ctx.job, self.config.worker
        if job.status == Status.INVALID:  # found invalid at intake, taken only for its negative-ack
            return Ending(Status.INVALID, error=job.error or "invalid payload")
        try:
            req = parse_source_request(job.payload)
        except InvalidPayload as exc:
            return Ending(Status.INVALID, error=f"invalid payload: {exc}")
        if job.expires_at is not None and time.time() >= job.expires_at:
            return Ending(Status.EXPIRED, error="deadline (expiresAt) passed before work started")
        refused = self._refuse_url(req.callback_url, worker.allowed_callback_hosts, "callback", "completeCallbackUrl",
                                   callback_target)
        if refused:
            return refused
        if job.skip_requested:
            return await self._complete(ctx, req, skip_body(job.skip_requested), skip_reason=job.skip_requested)
        if job.callback_body is not None:
            # A run before this one did the upload (or chose the skip); only its callback is left to send.
            body = json.loads(job.callback_body)
            return await self._complete(ctx, req, body, skip_reason=body.get("reason") if body.get("skip") else None)

        found = await ctx.step("resolve", lambda: self._resolve(ctx, req))
        if isinstance(found, Ending | Retry):
            return found
        if isinstance(found, NotFound):
            return await self._complete(ctx, req, skip_body(found.reason), skip_reason=found.reason)
        try:
            return await self._deliver(ctx, req, found)
        finally:
            await found.opened.aclose()  # the job ended before the upload took the sniffed stream

    async def _deliver(self, ctx: _JobContext, req: SourceRequest, found: Found) -> Ending | Retry:
        refused = self._refuse_url(req.upload_url, self.config.worker.allowed_upload_hosts, "upload", "uploadUrl",
                                   upload_target)
        if refused:
            return refused
        master = found.master
        measured = json.dumps(found.measured.to_json()) if found.measured else None
        await ctx.record(chosen_aspect=found.aspect, extension=found.extension, content_type=found.content_type,
                         bytes=master.size, source=f"{master.catalog}:{master.object}", measured=measured)
        delivered = await ctx.step("upload", lambda: self._upload(ctx, req, found))
        if isinstance(delivered, Ending | Retry):
            return delivered
        self.metrics.bytes_uploaded.inc(delivered.bytes)
        content_hash = f"sha256:{delivered.sha256}"
        await ctx.record(content_hash=content_hash, bytes=delivered.bytes)
        body = completion_body(req.storage_key, found.extension, content_hash,
                               found.aspect if req.request_kind == "afs" else None)
        return await self._complete(ctx, req, body, skip_reason=None)

    def _refuse_url(self, url: str, hosts: list[str], what: str, field: str,
                    read_as_sent: Callable[[str], Target]) -> Ending | None:
        """The ending for a URL nothing may be sent to: ``invalid`` when it breaks the policy or the
        library that sends to it reads another target than the allow-list check, ``failed`` when its
        host is outside the allow-list. None when it may be used."""
        try:
            check_url(url, hosts, allow_insecure_http=self.config.worker.allow_insecure_http, what=what,
                      read_as_sent=read_as_sent)
        except UnsafeUrl as exc:
            return Ending(Status.INVALID, error=f"invalid payload: fulfillment.{field}: {exc}")
        except HostNotAllowed as exc:
            return Ending(Status.FAILED, error=str(exc))
        return None

    async def _resolve(self, ctx: _JobContext, req: SourceRequest) -> Found | NotFound | Ending:
        """One try at finding the master."""
        try:
            return await ctx.attempt("resolve", lambda: self._find(req))
        except CatalogUnavailable as exc:
            raise Transient(f"catalog unavailable: {exc}", retry_after=exc.retry_after) from None
        except CatalogError as exc:
            return Ending(Status.FAILED, error=f"catalog: {exc}")

    async def _find(self, req: SourceRequest) -> tuple[Found | NotFound, str]:
        result = await find_master(req, self.config, self.catalogs)
        if isinstance(result, Found):
            m = result.master
            detail = f"{m.catalog}:{m.object} ({m.size} bytes, {result.content_type})"
        else:
            detail = result.reason
        return result, "; ".join([detail, *result.notes])

    async def _upload(self, ctx: _JobContext, req: SourceRequest, found: Found) -> Delivered | Ending:
        """One try at streaming the master to the upload URL."""
        try:
            return await ctx.attempt("upload", lambda: self._put(req, found))
        except CatalogUnavailable as exc:
            raise Transient(f"catalog unavailable mid-stream: {exc}", retry_after=exc.retry_after) from None
        except (CatalogError, SizeMismatch, ChecksumMismatch) as exc:
            return Ending(Status.FAILED, error=f"master unreadable: {exc}")
        except Refused as exc:
            hint = " (pre-signed URL expired or invalid)" if exc.http_status == 403 else ""
            return Ending(Status.FAILED, error=f"{exc}{hint}")

    async def _put(self, req: SourceRequest, found: Found) -> tuple[Delivered, str]:
        # The upload goes on with the stream the sniff opened: a pre-signed PUT cannot be resumed,
        # and each run resolves (and opens) the master afresh.
        catalog = self.catalogs.get(found.master.catalog)
        chunks = found.opened.take() or catalog.stream(found.master, 0, self.config.worker.chunk_bytes)
        started = time.perf_counter()
        try:
            delivered = await self.uploader.put(req.upload_url, chunks, found.master.size, found.content_type,
                                                expected_sha256=found.master.sha256)
        finally:
            self.metrics.upload_duration.observe(time.perf_counter() - started)
        return delivered, f"{delivered.bytes} bytes"

    async def _complete(self, ctx: _JobContext, req: SourceRequest, body: dict[str, object],
                        skip_reason: str | None) -> Ending | Retry:
        """Answer the wait token (completion or skip) and end the job by what the platform says."""
        try:
            answered = await ctx.step("callback", lambda: self._callback(ctx, req, body, skip_reason))
        except asyncio.CancelledError:
            # Cut short once the callback may have left: the platform may have it, answered or not. The
            # next run sends this very body again (no second upload) and reads a 409 as our own completion.
            await ctx.keep(callback_body=json.dumps(body), callback_unanswered=True)
            raise
        if isinstance(answered, Retry):
            # The next run sends this very body, without uploading again.
            keep: dict[str, Any] = {"callback_body": json.dumps(body)}
            if answered.failure.maybe_delivered:
                keep["callback_unanswered"] = True
            return replace(answered, keep=keep)
        if isinstance(answered, Ending):
            return answered
        done = Ending(Status.SKIPPED if skip_reason else Status.COMPLETED, skip_reason=skip_reason)
        if answered == 409 and ctx.job.callback_unanswered:
            # A try of ours whose answer never came (a timeout, a cut connection, a cancelled try) most
            # likely completed the token: the 409 is our own completion, not one from elsewhere.
            log.warning("callback answered 409 after a try whose answer was lost: taken as our own completion",
                        extra=ctx.log_extra)
            return done
        if answered == 409:
            return Ending(Status.SUPERSEDED, skip_reason=skip_reason,
                          error="callback answered 409: the request was completed elsewhere (e.g. a manual upload)")
        if answered == 410:
            return Ending(Status.EXPIRED, skip_reason=skip_reason, error="callback answered 410: the request expired")
        return done

    async def _callback(self, ctx: _JobContext, req: SourceRequest, body: dict[str, object],
                        skip_reason: str | None) -> int | Ending:
        """One try at posting the callback: the platform's HTTP status."""
        try:
            return await ctx.attempt("callback", lambda: self._post(req.callback_url, body, skip_reason))
        except Refused as exc:
            return Ending(Status.FAILED, error=str(exc), skip_reason=skip_reason)

    async def _post(self, url: str, body: dict[str, object], skip_reason: str | None) -> tuple[int, str]:
        started = time.perf_counter()
        try:
            status = await post_callback(self.client, url, body)
        finally:
            self.metrics.callback_duration.observe(time.perf_counter() - started)
        return status, "skip" if skip_reason else "complete"

    async def _negative_ack(self, ctx: _JobContext, ending: Ending) -> Ending:
        """Tell the platform a ``failed`` or ``invalid`` job has nothing for it (``worker.negative_ack_failures``),
        so the import resumes at once: one try, when the callback URL may be used. The job keeps its status
        and, once the platform took it, records the skip reason."""
        fulfillment = ctx.job.payload.get("fulfillment") if isinstance(ctx.job.payload, dict) else None
        url = fulfillment.get("completeCallbackUrl") if isinstance(fulfillment, dict) else None
        worker = self.config.worker
        if not isinstance(url, str) or self._refuse_url(url, worker.allowed_callback_hosts, "callback",
                                                        "completeCallbackUrl", callback_target):
            return ending
        body = failure_body(ending.error or ending.status)
        try:
            answered = await ctx.attempt("callback", lambda: self._post(url, body, str(body["reason"])))
        except (Transient, Refused) as exc:
            log.warning("negative-ack not taken: %s", exc, extra={**ctx.log_extra, "step": "callback"})
            return ending
        if 200 <= answered < 300:
            return replace(ending, skip_reason=str(body["reason"]))
        return ending


class _JobContext:
    """One run of one job: its attempts, what it recorded, its final write."""

    def __init__(self, engine: Engine, job: Job, owner: str):
        self.engine = engine
        self.job = job
        self.owner = owner
        self.log_extra = {"job_id": job.id, "event_id": job.event_id}
        self.deadline = job.expires_at if job.expires_at is not None else job.created_at + 3600
        self._recorded: dict[str, Any] = {}

    async def record(self, **fields: Any) -> None:
        await self.engine.store.update(self.job.id, self.owner, fields)
        self._recorded.update(fields)

    def known(self, name: str) -> Any:
        """A field as this run recorded it, else as the job was claimed."""
        return self._recorded[name] if name in self._recorded else getattr(self.job, name)

    async def step(self, step: str, fn: Callable[[], Awaitable[T]]) -> T | Ending | Retry:
        """One try of ``step``: what it returns, or a Retry when it fails transiently. Past the deadline
        (the step before ran into it) the job ends ``expired``: the platform's URLs are dead now."""
        if time.time() >= self.deadline:
            return Ending(Status.EXPIRED, error=f"deadline (expiresAt) passed before {step}")
        try:
            return await fn()
        except Transient as exc:
            return Retry(step, exc)

    async def attempt(self, step: str, fn: Callable[[], Awaitable[tuple[T, str | None]]]) -> T:
        """Run one try of ``step`` and keep it as an attempt, whatever happens; a try cut short is ``cancelled``."""
        started, clock = time.time(), time.perf_counter()
        http_status: int | None = None
        error: str | None = None
        detail: str | None = None
        transient = False
        try:
            result, detail = await fn()
            if isinstance(result, int):
                http_status = result
            elif isinstance(result, Delivered):
                http_status = result.http_status
            return result
        except asyncio.CancelledError:
            error = CANCELLED
            raise
        except (Transient, Refused) as exc:
            http_status, error, transient = exc.http_status, str(exc), isinstance(exc, Transient)
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            duration_ms = round((time.perf_counter() - clock) * 1000, 1)
            attempt = Attempt(step, started, duration_ms, http_status,
                              redact_text(error) if error else None, redact_text(detail) if detail else None)
            if error == CANCELLED:
                # Written whatever comes next (a second cancellation); the store failing does not hide the cut.
                with contextlib.suppress(StoreUnavailable):
                    await asyncio.shield(self.engine.store.add_attempt(self.job.id, attempt))
            else:
                await asyncio.shield(self.engine.store.add_attempt(self.job.id, attempt))
            if not transient:  # a transient failure has its line where the retry is planned
                log.info("%s %s", step, "ok" if error is None else ("cancelled" if error == CANCELLED else
                                                                     "failed: " + error),
                         extra={**self.log_extra, "step": step, "http_status": http_status,
                                "duration_ms": duration_ms})

    async def keep(self, **fields: Any) -> None:
        """Record ``fields`` while the run is being cancelled: shielded from a second cancellation, and a
        store failure does not hide the cancellation."""
        with contextlib.suppress(StoreUnavailable):
            await asyncio.shield(self.record(**fields))

    async def requeue(self, retry: Retry) -> Ending | None:
        """Give the job back to the queue until its next try is due (None), or end it ``expired`` when
        that would be past the deadline."""
        worker = self.engine.config.worker
        exc = retry.failure
        wait = next_try(self.job.retries + 1, exc, deadline=self.deadline, base_s=worker.retry_base_s,
                        cap_s=worker.retry_max_s)
        if wait is None:
            return Ending(Status.EXPIRED, error=f"deadline reached while retrying {retry.step}: {exc}")
        if retry.keep:
            await self.record(**retry.keep)
        self.engine.metrics.retries.labels(retry.step).inc()
        log.warning("%s: %s; retrying in %.2fs", retry.step, exc, wait,
                    extra={**self.log_extra, "step": retry.step, "http_status": exc.http_status,
                           "reason": redact_text(str(exc)), "wait_s": round(wait, 3)})
        if not await self.engine.store.release(self.job.id, self.owner, retry_in=wait):
            log.warning("job was closed elsewhere (a platform event or another worker) before its retry was queued",
                        extra=self.log_extra)
        return None

    async def finish(self, ending: Ending) -> Status:
        fields = {"skip_reason": ending.skip_reason, "error": redact_text(ending.error) if ending.error else None}
        held = await self.engine.store.finish(self.job.id, self.owner, ending.status, fields)
        if held:
            self.engine.metrics.jobs_finished.labels(ending.status).inc()
            level = logging.WARNING if ending.status in _ALARMING else logging.INFO
            log.log(level, "job %s", ending.status, extra={**self.log_extra, **self._outcome_extra(ending)})
        else:
            log.warning("job was closed elsewhere (a platform event or another worker) before it finished as %s",
                        ending.status, extra=self.log_extra)
        return ending.status

    def _outcome_extra(self, ending: Ending) -> dict[str, Any]:
        """What a job's outcome line says: the creative, the master delivered, and how long the job took."""
        source = self.known("source")
        catalog, _, obj = source.partition(":") if isinstance(source, str) else (None, "", None)
        return {
            "status": ending.status,
            "reason": ending.skip_reason or ending.error,
            "code": self.job.code,
            "catalog": catalog,
            "object": obj,
            "bytes": self.known("bytes"),
            "content_type": self.known("content_type"),
            "duration_ms": round(max(0.0, time.time() - self.job.created_at) * 1000, 1),
        }
