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
    try:
        parts = urlsplit(url)
        explicit_port = parts.port  # raises on a port out of range or not a number
    except ValueError:
        raise HostNotAllowed(f"{what} URL has a malformed host or port") from None
    host = (parts.hostname or "").lower()
    if parts.scheme == "http" and not allow_insecure_http:
        raise HostNotAllowed(f"{what} URL uses plain http (set worker.allow_insecure_http only for local tests)")
    if parts.scheme not in ("http", "https") or not host:
        raise HostNotAllowed(f"{what} URL is not an http(s) URL")
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    for pattern in allowed:
        pat_host, pat_port = _split_pattern(pattern)
        if fnmatchcase(host, pat_host) and (pat_port is None or pat_port == port):
            return
    raise HostNotAllowed(f"{what} host {host}:{port} is not in the allow-list")


def _split_pattern(pattern: str) -> tuple[str, int | None]:
    """``(host glob, port or None)`` from ``host``, ``host:port``, ``::1`` or ``[::1]:port``."""
    pattern = pattern.strip().lower()
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    head, sep, tail = pattern.rpartition(":")
    # One colon followed by digits is a port; more colons make a bare IPv6 address.
    if sep and head and ":" not in head and tail.isdigit():
        return head, int(tail)
    return pattern, None
