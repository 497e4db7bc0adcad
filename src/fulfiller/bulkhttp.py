"""urllib3 connection pools for moving masters: Drive downloads and uploads to pre-signed URLs.

Bulk bytes go through urllib3 from worker threads, in whole chunks, rather than
through the event loop's httpx client: measured on a 2-core machine, httpx's
async stream costs ~3 CPU-s per GiB downloaded (64 KiB reads, each a trip
through the loop) and ~0.5 per GiB uploaded, urllib3 ~0.3 and ~0.2. Small
JSON requests (the callback) stay on httpx.
"""

from __future__ import annotations

import certifi
import urllib3


def bulk_pool(timeout_s: float, max_connections: int, *, redirects: int) -> urllib3.PoolManager:
    """A pool that never retries on its own (callers know the peer's errors and the job's deadline).

    ``redirects`` is how many to follow: none for uploads, where a redirect could
    lead outside the allow-list. urllib3 drops the Authorization header when a
    redirect leaves the host.
    """
    return urllib3.PoolManager(
        maxsize=max_connections,
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=redirects,
                              raise_on_redirect=False),
        ca_certs=certifi.where(),  # the same trust store as httpx, whatever the image ships
    )


def release(response: urllib3.HTTPResponse) -> None:
    """Give the connection back to the pool, or close it if the body was not read to the end."""
    if response.length_remaining != 0:
        # Unread bytes left on the connection would be taken for the next request's answer.
        response.close()
    response.release_conn()
