"""urllib3 connection pools for moving masters: Drive downloads and uploads to pre-signed URLs.

Bulk bytes go through urllib3 from worker threads, in whole chunks, rather than
through the event loop's httpx client: httpx's async stream costs several times
the CPU per byte (its downloads come in 64 KiB reads, each a trip through the
loop). Small JSON requests (the callback) stay on httpx.

Like httpx and boto3, it honours ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``
and ``NO_PROXY`` (read once, at start): containers often reach the internet
only through an egress proxy.
"""

from __future__ import annotations

import threading
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import certifi
import urllib3


class BulkHttp:
    """urllib3 pools that never retry on their own: callers know the peer's errors and the job's deadline.

    ``redirects`` is how many to follow: none for uploads, where a redirect could
    lead outside the allow-list. urllib3 drops the Authorization header when a
    redirect leaves the host.
    """

    def __init__(self, timeout_s: float, max_connections: int, *, redirects: int):
        self._settings: dict[str, Any] = {
            "maxsize": max_connections,
            "timeout": urllib3.Timeout(connect=timeout_s, read=timeout_s),
            "retries": urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=redirects,
                                     raise_on_redirect=False),
            "ca_certs": certifi.where(),  # the same trust store as httpx, whatever the image ships
        }
        self._direct = urllib3.PoolManager(**self._settings)
        self._proxies = urllib.request.getproxies_environment()
        self._via: dict[str, urllib3.ProxyManager] = {}
        self._lock = threading.Lock()  # requests come from many worker threads

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        """``urllib3.PoolManager.request``, through the proxy the environment names for ``url``, if any."""
        return self._pool_for(url).request(method, url, **kwargs)  # type: ignore[return-value]

    def _pool_for(self, url: str) -> urllib3.PoolManager:
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme) or self._proxies.get("all")
        if not proxy or urllib.request.proxy_bypass_environment(parts.netloc, self._proxies):
            return self._direct
        with self._lock:
            if proxy not in self._via:
                auth = urllib3.util.parse_url(proxy).auth
                headers = urllib3.make_headers(proxy_basic_auth=auth) if auth else None
                self._via[proxy] = urllib3.ProxyManager(proxy, proxy_headers=headers, **self._settings)
            return self._via[proxy]

    def clear(self) -> None:
        """Close every pooled connection."""
        self._direct.clear()
        with self._lock:
            for pool in self._via.values():
                pool.clear()


def release(response: urllib3.HTTPResponse) -> None:
    """Give the connection back to the pool, or close it if the body was not read to the end."""
    if response.length_remaining != 0:
        # Unread bytes left on the connection would be taken for the next request's answer.
        response.close()
    response.release_conn()
