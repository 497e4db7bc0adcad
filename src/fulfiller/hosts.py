"""Allow-lists for where bytes and callbacks may go.

The upload and callback URLs come from the event; a forged or compromised
event must not turn the worker into a way to send masters anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from urllib.parse import urlsplit


class HostNotAllowed(Exception):
    """The URL's scheme or host is outside what the config allows."""


def check_url(url: str, allowed: Sequence[str], *, allow_insecure_http: bool, what: str) -> None:
    """Raise HostNotAllowed unless ``url`` is https (or http when allowed) to an allowed host.

    Patterns are host globs (``*.r2.cloudflarestorage.com``); ``host:port`` pins a port,
    a bare host allows any port.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "http" and not allow_insecure_http:
        raise HostNotAllowed(f"{what} URL uses plain http (set worker.allow_insecure_http only for local tests)")
    if parts.scheme not in ("http", "https") or not host:
        raise HostNotAllowed(f"{what} URL is not an http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for pattern in allowed:
        pat_host, sep, pat_port = pattern.lower().rpartition(":") if _has_port(pattern) else (pattern.lower(), "", "")
        if fnmatchcase(host, pat_host) and (not sep or pat_port == str(port)):
            return
    raise HostNotAllowed(f"{what} host {host}:{port} is not in the allow-list")


def _has_port(pattern: str) -> bool:
    head, sep, tail = pattern.rpartition(":")
    return bool(sep and head and tail.isdigit())
