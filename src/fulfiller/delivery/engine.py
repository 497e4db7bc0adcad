"""One job, start to finish: resolve the master, stream it, complete the wait token.

Each step returns what it got or the ``Ending`` that closes the job, so a run
reads top to bottom. Every try of every step is kept as an attempt. Transient
failures (``Transient``) are retried with backoff inside the job's deadline;
answers that retrying cannot change (403 on the upload, 4xx on the callback, a
catalog's permanent refusal) end the job ``failed`` with the reason an
operator needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable
from fulfiller.config import Config
from fulfiller.delivery.callback import callback_target, completion_body, post_callback, skip_body
from fulfiller.delivery.resolve import Catalogs, Found, NotFound, find_master
from fulfiller.delivery.transfer import ChecksumMismatch, Delivered, Refused, SizeMismatch, Uploader, upload_target
from fulfiller.events import InvalidPayload, SourceRequest, parse_source_request
from fulfiller.hosts import HostNotAllowed, Target, UnsafeUrl, check_url
from fulfiller.jobs import Attempt, Job, Status, internal_error
from fulfiller.metrics import Metrics
from fulfiller.redact import redact_text
from fulfiller.retry import Transient, with_retries
from fulfiller.store.base import Store, StoreUnavailable

log = logging.getLogger("fulfiller.engine")
T = TypeVar("T")


@dataclass(frozen=True)
class Ending:
    """How a run ends: the job's final status and the reasons recorded with it."""

    status: Status
    error: str | None = None
    skip_reason: str | None = None


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
        """Take a claimed job to a final status (returned), unless it is cancelled or the store fails.

        Any other exception, whatever raised it, ends the job ``failed`` with ``internal error: ...``
        and a logged traceback: one job never stops a worker.
        """
        ctx = _JobContext(self, job, owner)
        try:
            ending = await self._run_steps(ctx)
        except StoreUnavailable:
            raise  # the store's fault, not the job's: its lease lapses and it runs again
        except Exception as exc:
            log.exception("internal error; the job ends failed", extra=ctx.log_extra)
            ending = Ending(Status.FAILED, error=internal_error(exc))
        return await ctx.finish(ending)

    async def _run_steps(self, ctx: _JobContext) -> Ending:
        job, worker = ctx.job, self.config.worker
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

        found = await ctx.retried("resolve", lambda: self._resolve(ctx, req))
        if isinstance(found, Ending):
            return found
        if isinstance(found, NotFound):
            return await self._complete(ctx, req, skip_body(found.reason), skip_reason=found.reason)
        try:
            return await self._deliver(ctx, req, found)
        finally:
            await found.opened.aclose()  # the job ended before the upload took the sniffed stream

    async def _deliver(self, ctx: _JobContext, req: SourceRequest, found: Found) -> Ending:
        refused = self._refuse_url(req.upload_url, self.config.worker.allowed_upload_hosts, "upload", "uploadUrl",
                                   upload_target)
        if refused:
            return refused
        master = found.master
        await ctx.record(chosen_aspect=found.aspect, extension=found.extension, content_type=found.content_type,
                         bytes=master.size, source=f"{master.catalog}:{master.object}")
        delivered = await ctx.retried("upload", lambda: self._upload(ctx, req, found))
        if isinstance(delivered, Ending):
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
        # Each try streams from the first byte: a pre-signed PUT cannot be resumed. The first
        # goes on with the stream the sniff opened; a retry opens its own.
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
                        skip_reason: str | None) -> Ending:
        """Answer the wait token (completion or skip) and end the job by what the platform says."""
        answered = await ctx.retried("callback", lambda: self._callback(ctx, req, body, skip_reason))
        if isinstance(answered, Ending):
            return answered
        done = Ending(Status.SKIPPED if skip_reason else Status.COMPLETED, skip_reason=skip_reason)
        if answered == 409 and ctx.maybe_delivered("callback"):
            # A try of ours whose answer never came (a timeout, a cut connection) most likely
            # completed the token: the 409 is our own completion, not one from elsewhere.
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
            return await ctx.attempt("callback", lambda: self._post(req, body, skip_reason))
        except Refused as exc:
            return Ending(Status.FAILED, error=str(exc), skip_reason=skip_reason)

    async def _post(self, req: SourceRequest, body: dict[str, object], skip_reason: str | None) -> tuple[int, str]:
        started = time.perf_counter()
        try:
            status = await post_callback(self.client, req.callback_url, body)
        finally:
            self.metrics.callback_duration.observe(time.perf_counter() - started)
        return status, "skip" if skip_reason else "complete"


class _JobContext:
    """One run of one job: its attempts, its retries, its final write."""

    def __init__(self, engine: Engine, job: Job, owner: str):
        self.engine = engine
        self.job = job
        self.owner = owner
        self.log_extra = {"job_id": job.id, "event_id": job.event_id}
        self._sent_unanswered: set[str] = set()  # steps with a retried try that may have reached the peer

    def maybe_delivered(self, step: str) -> bool:
        """True when a retried try of ``step`` may have reached the peer though its answer was lost."""
        return step in self._sent_unanswered

    async def record(self, **fields: Any) -> None:
        await self.engine.store.update(self.job.id, self.owner, fields)

    async def attempt(self, step: str, fn: Callable[[], Awaitable[tuple[T, str | None]]]) -> T:
        """Run one try of ``step`` and keep it as an attempt, whatever happens."""
        started, clock = time.time(), time.perf_counter()
        http_status: int | None = None
        error: str | None = None
        detail: str | None = None
        try:
            result, detail = await fn()
            if isinstance(result, int):
                http_status = result
            elif isinstance(result, Delivered):
                http_status = result.http_status
            return result
        except (Transient, Refused) as exc:
            http_status, error = exc.http_status, str(exc)
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            duration_ms = round((time.perf_counter() - clock) * 1000, 1)
            attempt = Attempt(step, started, duration_ms, http_status,
                              redact_text(error) if error else None, redact_text(detail) if detail else None)
            await self.engine.store.add_attempt(self.job.id, attempt)
            log.info("%s %s", step, "failed: " + attempt.error if attempt.error else "ok",
                     extra={**self.log_extra, "step": step, "http_status": http_status, "duration_ms": duration_ms})

    async def retried(self, step: str, fn: Callable[[], Awaitable[T]]) -> T | Ending:
        """``fn`` tried again on Transient until the deadline; past it, the job ends ``expired``."""
        worker = self.engine.config.worker
        deadline = self.job.expires_at or (time.time() + 3600)
        if time.time() >= deadline:
            # The step before ran into the deadline: the platform's URLs are dead now.
            return Ending(Status.EXPIRED, error=f"deadline (expiresAt) passed before {step}")

        def on_retry(exc: Transient, wait: float) -> None:
            if exc.maybe_delivered:
                self._sent_unanswered.add(step)
            self.engine.metrics.retries.labels(step).inc()
            log.warning("%s: %s; retrying in %.2fs", step, exc, wait, extra={**self.log_extra, "step": step})

        try:
            return await with_retries(fn, deadline=deadline, base_s=worker.retry_base_s, cap_s=worker.retry_max_s,
                                      on_retry=on_retry)
        except Transient as exc:
            return Ending(Status.EXPIRED, error=f"deadline reached while retrying {step}: {exc}")

    async def finish(self, ending: Ending) -> Status:
        fields = {"skip_reason": ending.skip_reason, "error": redact_text(ending.error) if ending.error else None}
        held = await self.engine.store.finish(self.job.id, self.owner, ending.status, fields)
        if held:
            self.engine.metrics.jobs_finished.labels(ending.status).inc()
            log.info("job %s", ending.status, extra={**self.log_extra, "status": ending.status,
                                                    "reason": ending.skip_reason or ending.error})
        else:
            log.warning("job was closed elsewhere (a platform event or another worker) before it finished as %s",
                        ending.status, extra=self.log_extra)
        return ending.status
