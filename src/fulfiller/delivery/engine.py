"""One job, start to finish: resolve the master, stream it, complete the wait token.

Every try of every step is kept as an attempt. Transient failures are retried
with backoff inside the job's deadline; answers that retrying cannot change
(403 on the upload, 4xx on the callback, a catalog's permanent refusal) end
the job ``failed`` with the reason an operator needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable
from fulfiller.config import Config
from fulfiller.delivery.callback import callback_target, completion_body, post_callback, skip_body
from fulfiller.delivery.resolve import Catalogs, Found, find_master
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


class _End(Exception):
    """Ends the job with ``status`` and the fields to record."""

    def __init__(self, status: str, **fields: Any):
        super().__init__(status)
        self.status = status
        self.fields = fields


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

    async def run(self, job: Job, owner: str) -> str:
        """Take a claimed job to a final status (returned), unless it is cancelled or the store fails.

        Any other exception, whatever raised it, ends the job ``failed`` with ``internal error: ...``
        and a logged traceback: one job never stops a worker.
        """
        ctx = _JobContext(self, job, owner)
        try:
            try:
                await self._steps(ctx)
            except _End as end:
                return await ctx.finish(end.status, **end.fields)
            raise AssertionError("a job's steps always end it")  # pragma: no cover
        except StoreUnavailable:
            raise  # the store's fault, not the job's: its lease lapses and it runs again
        except Exception as exc:
            log.exception("internal error; the job ends failed", extra=ctx.log_extra)
            return await ctx.finish(Status.FAILED, error=internal_error(exc))

    async def _steps(self, ctx: _JobContext) -> None:
        job, worker = ctx.job, self.config.worker
        try:
            req = parse_source_request(job.payload)
        except InvalidPayload as exc:
            raise _End(Status.INVALID, error=f"invalid payload: {exc}") from None
        if job.expires_at is not None and time.time() >= job.expires_at:
            raise _End(Status.EXPIRED, error="deadline (expiresAt) passed before work started")
        self._allow(req.callback_url, worker.allowed_callback_hosts, "callback", "completeCallbackUrl", callback_target)

        if job.skip_requested:
            await self._complete(ctx, req, skip_body(job.skip_requested), skip_reason=job.skip_requested)

        found = await ctx.retried("resolve", lambda: self._resolve(ctx, req))
        if not isinstance(found, Found):
            await self._complete(ctx, req, skip_body(found.reason), skip_reason=found.reason)
        try:
            await self._deliver(ctx, req, found)
        finally:
            await found.opened.aclose()  # the job ended before the upload took the sniffed stream

    async def _deliver(self, ctx: _JobContext, req: SourceRequest, found: Found) -> None:
        self._allow(req.upload_url, self.config.worker.allowed_upload_hosts, "upload", "uploadUrl", upload_target)
        master = found.master
        await ctx.record(chosen_aspect=found.aspect, extension=found.extension, content_type=found.content_type,
                         bytes=master.size, source=f"{master.catalog}:{master.object}")
        delivered = await ctx.retried("upload", lambda: self._upload(ctx, req, found))
        self.metrics.bytes_uploaded.inc(delivered.bytes)
        content_hash = f"sha256:{delivered.sha256}"
        await ctx.record(content_hash=content_hash, bytes=delivered.bytes)
        body = completion_body(req.storage_key, found.extension, content_hash,
                               found.aspect if req.request_kind == "afs" else None)
        await self._complete(ctx, req, body, skip_reason=None)

    def _allow(self, url: str, hosts: list[str], what: str, field: str,
               read_as_sent: Callable[[str], Target]) -> None:
        """End the job before anything is sent: ``invalid`` when the URL breaks the policy or the library
        that sends to it reads another target than the allow-list check, ``failed`` when its host is
        outside the allow-list."""
        try:
            check_url(url, hosts, allow_insecure_http=self.config.worker.allow_insecure_http, what=what,
                      read_as_sent=read_as_sent)
        except UnsafeUrl as exc:
            raise _End(Status.INVALID, error=f"invalid payload: fulfillment.{field}: {exc}") from None
        except HostNotAllowed as exc:
            raise _End(Status.FAILED, error=str(exc)) from None

    async def _resolve(self, ctx: _JobContext, req: SourceRequest) -> Any:
        async def attempt() -> Any:
            result = await find_master(req, self.config, self.catalogs)
            detail = "; ".join(result.notes) or None
            if isinstance(result, Found):
                m = result.master
                return result, f"{m.catalog}:{m.object} ({m.size} bytes, {result.content_type})" + (
                    f"; {detail}" if detail else "")
            return result, f"{result.reason}" + (f"; {detail}" if detail else "")

        try:
            return await ctx.attempt("resolve", attempt)
        except CatalogUnavailable as exc:
            raise Transient(f"catalog unavailable: {exc}") from None
        except CatalogError as exc:
            raise _End(Status.FAILED, error=f"catalog: {exc}") from None

    async def _upload(self, ctx: _JobContext, req: SourceRequest, found: Found) -> Delivered:
        catalog = self.catalogs.get(found.master.catalog)

        async def attempt() -> tuple[Delivered, str]:
            # Each try streams from the first byte: a pre-signed PUT cannot be resumed. The first
            # goes on with the stream the sniff opened; a retry opens its own.
            chunks = found.opened.take() or catalog.stream(found.master, 0, self.config.worker.chunk_bytes)
            started = time.perf_counter()
            try:
                delivered = await self.uploader.put(req.upload_url, chunks, found.master.size, found.content_type,
                                                    expected_sha256=found.master.sha256)
            finally:
                self.metrics.upload_duration.observe(time.perf_counter() - started)
            return delivered, f"{delivered.bytes} bytes"

        try:
            return await ctx.attempt("upload", attempt)
        except CatalogUnavailable as exc:
            raise Transient(f"catalog unavailable mid-stream: {exc}") from None
        except (CatalogError, SizeMismatch, ChecksumMismatch) as exc:
            raise _End(Status.FAILED, error=f"master unreadable: {exc}") from None
        except Refused as exc:
            hint = " (pre-signed URL expired or invalid)" if exc.http_status == 403 else ""
            raise _End(Status.FAILED, error=f"{exc}{hint}") from None

    async def _complete(self, ctx: _JobContext, req: SourceRequest, body: dict[str, object],
                        skip_reason: str | None) -> None:
        async def attempt() -> tuple[int, str]:
            started = time.perf_counter()
            try:
                status = await post_callback(self.client, req.callback_url, body)
            finally:
                self.metrics.callback_duration.observe(time.perf_counter() - started)
            return status, "skip" if skip_reason else "complete"

        answer_lost = False

        async def call() -> int:
            nonlocal answer_lost
            try:
                return await ctx.attempt("callback", attempt)
            except Refused as exc:
                raise _End(Status.FAILED, error=str(exc), skip_reason=skip_reason) from None
            except Transient as exc:
                answer_lost = answer_lost or exc.maybe_delivered
                raise

        status = await ctx.retried("callback", call)
        if status == 409 and answer_lost:
            # A try of ours whose answer never came (a timeout, a cut connection) most likely
            # completed the token: the 409 is our own completion, not one from elsewhere.
            log.warning("callback answered 409 after a try whose answer was lost: taken as our own completion",
                        extra=ctx.log_extra)
            raise _End(Status.SKIPPED if skip_reason else Status.COMPLETED, skip_reason=skip_reason)
        if status == 409:
            raise _End(Status.SUPERSEDED, skip_reason=skip_reason,
                       error="callback answered 409: the request was completed elsewhere (e.g. a manual upload)")
        if status == 410:
            raise _End(Status.EXPIRED, skip_reason=skip_reason, error="callback answered 410: the request expired")
        raise _End(Status.SKIPPED if skip_reason else Status.COMPLETED, skip_reason=skip_reason)


class _JobContext:
    """One run of one job: its attempts, its retries, its final write."""

    def __init__(self, engine: Engine, job: Job, owner: str):
        self.engine = engine
        self.job = job
        self.owner = owner
        self.log_extra = {"job_id": job.id, "event_id": job.event_id}

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

    async def retried(self, step: str, fn: Callable[[], Awaitable[T]]) -> T:
        """``fn`` with retries on Transient until the deadline; past it the job is ``expired``."""
        worker = self.engine.config.worker
        deadline = self.job.expires_at or (time.time() + 3600)
        if time.time() >= deadline:
            # The step before ran into the deadline: the platform's URLs are dead now.
            raise _End(Status.EXPIRED, error=f"deadline (expiresAt) passed before {step}")

        def on_retry(exc: Transient, wait: float) -> None:
            self.engine.metrics.retries.labels(step).inc()
            log.warning("%s: %s; retrying in %.2fs", step, exc, wait, extra={**self.log_extra, "step": step})

        try:
            return await with_retries(fn, deadline=deadline, base_s=worker.retry_base_s, cap_s=worker.retry_max_s,
                                      on_retry=on_retry)
        except Transient as exc:
            raise _End(Status.EXPIRED, error=f"deadline reached while retrying {step}: {exc}") from None

    async def finish(self, status: str, **fields: Any) -> str:
        if "error" in fields and fields["error"]:
            fields["error"] = redact_text(fields["error"])
        held = await self.engine.store.finish(self.job.id, self.owner, status, fields)
        if held:
            self.engine.metrics.jobs_finished.labels(status).inc()
            log.info("job %s", status, extra={**self.log_extra, "status": status,
                                             "reason": fields.get("skip_reason") or fields.get("error")})
        else:
            log.warning("job was closed elsewhere (a platform event or another worker) before it finished as %s",
                        status, extra=self.log_extra)
        return status
