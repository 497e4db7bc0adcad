"""The completion callback: the platform's wait token, completed once.

200/202 close the request, 409 means someone (a manual upload) completed it
first, 410 means the hour ran out. Both are final answers, not errors.
"""

from __future__ import annotations

import httpx

from fulfiller.delivery.transfer import Refused, excerpt, transient_for
from fulfiller.hosts import Target
from fulfiller.redact import redact_text
from fulfiller.retry import Transient


def completion_body(storage_key: str, extension: str, content_hash: str, aspect: str | None) -> dict[str, object]:
    """The positive ack: OSS echoes the storage key; AFS adds the aspect delivered."""
    body: dict[str, object] = {"storageKey": storage_key}
    if aspect is not None:
        body["aspectRatio"] = aspect
    body["extension"] = extension
    body["contentHash"] = content_hash
    return body


def skip_body(reason: str) -> dict[str, object]:
    """The negative ack: we looked and have nothing for this bucket."""
    return {"skip": True, "reason": reason}


# A reason the platform stores and shows: long enough for any error this service writes, bounded all the same.
_MAX_FAILURE_REASON = 1000


def failure_body(error: str) -> dict[str, object]:
    """The negative ack for a job that ended ``failed`` or ``invalid`` (``worker.negative_ack_failures``):
    the platform resumes the import at once instead of waiting out the request's hour."""
    return skip_body(f"failed:{error}"[:_MAX_FAILURE_REASON])


def callback_target(url: str) -> Target:
    """Where a callback to ``url`` goes, as httpx (which sends it) reads the URL."""
    parts = httpx.URL(url)
    return Target.of(parts.scheme, parts.host, parts.port)


async def post_callback(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> int:
    """POST the completion (or skip) body; return 2xx, 409 or 410, raise Transient or Refused otherwise."""
    try:
        response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        # Only a failure to connect proves the request never left; after a timeout or a cut
        # connection the platform may have completed the token without our reading its answer.
        unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        raise Transient(f"callback failed: {type(exc).__name__}: {redact_text(str(exc))}",
                        maybe_delivered=not unsent) from None
    if response.is_success or response.status_code in (409, 410):
        return response.status_code
    transient = transient_for(response.status_code, response.headers.get("retry-after"), "callback")
    if transient:
        raise transient
    raise Refused("callback", response.status_code, excerpt(response.text))
