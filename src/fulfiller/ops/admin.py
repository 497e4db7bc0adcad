"""The operator API under ``/admin``: list and inspect jobs, rerun or skip one, read refused deliveries.

Mounted only when an admin token is configured; every route checks it in
constant time. Responses never carry pre-signed URL signatures or tokens.
Every action that changes a job, and every refused token, leaves an audit line
with the client's address (never the token).
"""

from __future__ import annotations

import hmac
import logging
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from fulfiller.intake.refusal_log import RefusalLog
from fulfiller.jobs import Status
from fulfiller.store.base import REFUSALS, Requeue, Store

audit = logging.getLogger("fulfiller.admin")


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return max(lo, min(hi, int(raw)))
    except ValueError:
        return default


class AdminApi:
    def __init__(self, store: Store, token: str, refusals: RefusalLog):
        self.store = store
        self.refusals = refusals
        self._token = token.encode()

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)

    def routes(self) -> list[Route]:
        def guarded(handler):  # type: ignore[no-untyped-def]
            async def endpoint(request: Request) -> Response:
                if not self.authorized(request):
                    audit.warning("admin token refused", extra={"http_status": 401, "client": _client(request),
                                                                  "path": request.url.path})
                    return JSONResponse({"error": "missing or wrong admin token"}, 401,
                                        headers={"WWW-Authenticate": "Bearer"})
                return await handler(request)

            return endpoint

        return [
            Route("/admin", self.console, methods=["GET"]),
            Route("/admin/jobs", guarded(self.list_jobs), methods=["GET"]),
            Route("/admin/jobs/{job_id}", guarded(self.get_job), methods=["GET"]),
            Route("/admin/jobs/{job_id}/rerun", guarded(self.rerun), methods=["POST"]),
            Route("/admin/jobs/{job_id}/skip", guarded(self.skip), methods=["POST"]),
            Route("/admin/refusals", guarded(self.list_refusals), methods=["GET"]),
        ]

    async def console(self, request: Request) -> Response:
        # The page itself holds no data; it asks for the token and calls the API with it.
        html = files("fulfiller.ops").joinpath("static/admin.html").read_text()
        # frame-ancestors cannot be set from the page's own <meta> CSP: no framing (clickjacking of Rerun/Skip).
        return HTMLResponse(html, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                           "Content-Security-Policy": "frame-ancestors 'none'",
                                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    async def list_jobs(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in set(Status):
            return JSONResponse({"error": f"unknown status {status!r}", "statuses": list(Status)}, 400)
        limit = _int_param(request, "limit", 50, 1, 500)
        offset = _int_param(request, "offset", 0, 0, 10_000_000)
        found = await self.store.list_jobs(status, request.query_params.get("code") or None, limit + 1, offset)
        body = {
            "jobs": [j.to_json() for j in found[:limit]],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if len(found) > limit else None,
        }
        return JSONResponse(body)

    async def list_refusals(self, request: Request) -> Response:
        """The last refused deliveries, newest first, with the doctor's codes and advice (never a body, a
        secret or a signature: the log keeps none)."""
        kept = self.refusals.recent()
        return JSONResponse({"refusals": [r.to_json() for r in kept], "capacity": self.refusals.capacity})

    async def get_job(self, request: Request) -> Response:
        job = await self.store.get_job(request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": "no such job"}, 404)
        return JSONResponse(job.to_json(with_payload=True))

    async def rerun(self, request: Request) -> Response:
        return await self._requeue(request, "rerun", None)

    async def skip(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            return self._answer(request, "skip", "no_reason", 400, {"error": 'body must be {"reason": "..."}'})
        return await self._requeue(request, "skip", reason.strip())

    async def _requeue(self, request: Request, action: str, skip_reason: str | None) -> Response:
        job_id = request.path_params["job_id"]
        outcome = await self.store.requeue(job_id, skip_reason)
        if outcome != Requeue.QUEUED:
            status = 404 if outcome == Requeue.NOT_FOUND else 409
            return self._answer(request, action, outcome, status, {"error": REFUSALS[outcome]}, skip_reason)
        return self._answer(request, action, outcome, 202,
                            {"status": "queued", "id": job_id, "skip": skip_reason is not None}, skip_reason)

    @staticmethod
    def _answer(request: Request, action: str, outcome: str, status: int, body: dict[str, object],
                reason: str | None = None) -> Response:
        """The answer to an action on a job, after its audit line: who asked for what, and what came of it."""
        audit.info("admin %s %s", action, outcome, extra={
            "job_id": request.path_params["job_id"], "outcome": outcome, "http_status": status,
            "client": _client(request), "reason": reason})
        return JSONResponse(body, status)
