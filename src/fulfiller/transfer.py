"""Streaming a master to the pre-signed upload URL.

S3-style pre-signed PUTs (R2 included) refuse chunked bodies, so the request
carries the exact Content-Length known from the catalog, and the bytes flow
through in chunks: memory stays flat whatever the master's size. SHA-256 is
computed on the way for the callback's ``contentHash``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from fulfiller.redact import redact_text
from fulfiller.retry import Transient, parse_retry_after


@dataclass(frozen=True)
class Delivered:
    bytes: int
    sha256: str  # lowercase hex
    http_status: int


class Refused(Exception):
    """The peer answered with a status that retrying will not change."""

    def __init__(self, what: str, http_status: int, body: str):
        super().__init__(f"{what} answered {http_status}: {body}" if body else f"{what} answered {http_status}")
        self.http_status = http_status
        self.body = body


class SizeMismatch(Exception):
    """The catalog gave more or fewer bytes than it said the master has."""


def response_excerpt(response: httpx.Response, limit: int = 500) -> str:
    """The start of a response body, kept on the job so operators see why a peer refused."""
    return redact_text(response.text[:limit].strip())


def transient_for(response: httpx.Response, what: str) -> Transient | None:
    """A Transient for 429 and 5xx answers (honouring Retry-After), else None."""
    if response.status_code == 429 or response.status_code >= 500:
        return Transient(
            f"{what} answered {response.status_code}",
            http_status=response.status_code,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    return None


async def upload(
    client: httpx.AsyncClient, url: str, chunks: AsyncIterator[bytes], size: int, content_type: str
) -> Delivered:
    """PUT ``size`` bytes from ``chunks`` to ``url``; raise Transient, Refused or SizeMismatch."""
    hasher = hashlib.sha256()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        # Each chunk goes out when the next one arrives, the last only once the source has ended
        # cleanly: a check the catalog makes at the end (Drive's md5) then fails the PUT short of its
        # Content-Length, so the store never keeps a whole object made of bad bytes.
        nonlocal sent
        held = b""
        async for chunk in chunks:
            sent += len(chunk)
            if sent > size:
                raise SizeMismatch(f"master grew past its listed size of {size} bytes")
            hasher.update(chunk)
            if held:
                yield held
            held = chunk
        if sent != size:
            raise SizeMismatch(f"master ended at {sent} of its listed {size} bytes")
        if held:
            yield held

    headers = {"Content-Type": content_type, "Content-Length": str(size)}
    try:
        response = await client.put(url, content=body(), headers=headers)
    except httpx.HTTPError as exc:
        raise Transient(f"upload failed: {type(exc).__name__}: {redact_text(str(exc))}") from None
    if response.is_success:
        return Delivered(sent, hasher.hexdigest(), response.status_code)
    transient = transient_for(response, "upload")
    if transient:
        raise transient
    raise Refused("upload", response.status_code, response_excerpt(response))
