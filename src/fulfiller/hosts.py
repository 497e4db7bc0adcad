"""Where bytes and callbacks may go: the URL policy and the allow-lists.

The upload and callback URLs come from the event; a forged or compromised
event must not turn the worker into a way to send masters anywhere. A URL is
used only when it is plainly what it looks like: an absolute http(s) URL, at
most 8 KiB, with an ASCII host, no userinfo, and no backslash, whitespace or
control character anywhere. Those are the characters on which URL parsers
disagree about where the host ends, so a URL without them has one reading.
The sending library's reading is compared with ours once more just before
sending (``check_url``'s ``read_as_sent``), and the host is then matched
against the allow-list.

Pure standard library: the domain's event parsing applies the same policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import NamedTuple
from urllib.parse import urlsplit

MAX_URL_BYTES = 8 * 1024
DEFAULT_PORTS = {"http": 80, "https": 443}

# Characters no sendable URL holds: a backslash (urllib3 and browsers end the host there, urllib.parse
# does not), whitespace (any Unicode space, line breaks included), control characters, lone surrogates.
_FORBIDDEN = re.compile(r"[\\\s\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# host[:port] once userinfo is ruled out: a registered name of unreserved characters (no percent-escapes,
# which urllib3 decodes and urllib.parse does not) or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"(?P<host>[A-Za-z0-9._~-]+|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])(?::(?P<port>[0-9]{1,5}))?")
# The usual shape, decided without splitting: a plain host name, no port, and only printable ASCII
# other than a backslash after it. Every URL it matches passes the full check with the same target.
_PLAIN_URL = re.compile(r"(https?)://([A-Za-z0-9.-]+)(?:[/?#][!-\[\]-~]*)?")
# Allow-list patterns: host globs (fnmatch's * and ?) and IPv6 addresses, which may hold globs too.
_HOST_GLOB = re.compile(r"[A-Za-z0-9._~*?-]+")
_IPV6_GLOB = re.compile(r"[0-9A-Fa-f:.*?]*:[0-9A-Fa-f:.*?]*")


class UnsafeUrl(ValueError):
    """The URL breaks the policy; the message says how, without repeating the URL."""


class HostNotAllowed(Exception):
    """The URL's scheme or host is outside what the config allows."""


class Target(NamedTuple):
    """Where a URL sends: lowercase scheme and host (an IPv6 address without brackets), and the port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, scheme: str, host: str, port: int | None) -> Target:
        """A target as any parser reports it, normalised: default port filled in, case and brackets dropped."""
        scheme = scheme.lower()
        return cls(scheme, host.lower().removeprefix("[").removesuffix("]"),
                   port if port is not None else DEFAULT_PORTS.get(scheme, 0))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(url: str) -> Target:
    """Where ``url`` sends, or UnsafeUrl when the policy refuses it (see the module's docstring)."""
    if len(url) <= MAX_URL_BYTES and (plain := _PLAIN_URL.fullmatch(url)):
        return Target(plain[1], plain[2].lower(), DEFAULT_PORTS[plain[1]])
    return _parse_target(url)


def _parse_target(url: str) -> Target:
    if len(url) > MAX_URL_BYTES or len(url.encode("utf-8", "surrogatepass")) > MAX_URL_BYTES:
        raise UnsafeUrl("is longer than 8 KiB")
    if bad := _FORBIDDEN.search(url):
        raise UnsafeUrl(f"holds {_describe(bad[0])} at position {bad.start()}")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsafeUrl("is not a valid URL") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.netloc:
        raise UnsafeUrl("must be an absolute http(s) URL")
    if "@" in parts.netloc:
        raise UnsafeUrl("has userinfo (user@host): a URL we send to names its host alone")
    if not parts.netloc.isascii():
        raise UnsafeUrl("has a host that is not plain ASCII")
    host_port = _HOST_PORT.fullmatch(parts.netloc)
    if not host_port:
        raise UnsafeUrl("has a malformed host or port")
    port = int(host_port["port"]) if host_port["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise UnsafeUrl(f"has a port out of range ({port})")
    return Target.of(parts.scheme, host_port["host"], port)


def _describe(char: str) -> str:
    if char == "\\":
        return "a backslash"
    kind = "whitespace" if char.isspace() else "a control character"
    return f"{kind} ({ascii(char)})"


def check_url(url: str, allowed: Sequence[str], *, allow_insecure_http: bool, what: str,
              read_as_sent: Callable[[str], Target] | None = None) -> Target:
    """The target of ``url`` when the worker may send to it.

    Raises UnsafeUrl when the policy refuses the URL, or when ``read_as_sent`` (the
    sending library's own parser) fails on it or reads another scheme, host or port;
    HostNotAllowed when it is plain http without ``allow_insecure_http``, or its host
    and port match no pattern in ``allowed`` (see ``parse_pattern``).
    """
    target = parse_target(url)
    if read_as_sent is not None:
        try:
            sent = read_as_sent(url)
        except Exception as exc:  # any failure to parse: its message may quote the URL, so only its type
            raise UnsafeUrl(f"the {what} client cannot parse it ({type(exc).__name__})") from None
        if sent != target:
            raise UnsafeUrl(f"the {what} client reads it as {sent.scheme}://{sent}, not {target.scheme}://{target}")
    if target.scheme == "http" and not allow_insecure_http:
        raise HostNotAllowed(f"{what} URL uses plain http (set worker.allow_insecure_http only for local tests)")
    for pattern in allowed:
        pat_host, pat_port = parse_pattern(pattern)
        if fnmatchcase(target.host, pat_host) and (pat_port is None or pat_port == target.port):
            return target
    raise HostNotAllowed(f"{what} host {target} is not in the allow-list")


def parse_pattern(pattern: str) -> tuple[str, int | None]:
    """``(lowercase host glob, port or None for any)`` from an allow-list pattern; ValueError if it is none.

    Patterns are ``host``, ``host:port`` and ``host:*`` (the host a glob such as
    ``*.r2.cloudflarestorage.com``; a bare host and ``host:*`` allow any port), and for
    IPv6 ``[addr]``, ``[addr]:port``, ``[addr]:*`` or a bare address.
    """
    if pattern.startswith("["):
        host, closed, rest = pattern[1:].partition("]")
        ok = bool(closed) and bool(_IPV6_GLOB.fullmatch(host)) and (not rest or rest.startswith(":"))
        port = rest[1:] if rest else None
    elif pattern.count(":") > 1:  # a bare IPv6 address: a port needs the brackets
        host, port, ok = pattern, None, bool(_IPV6_GLOB.fullmatch(pattern))
    else:
        host, colon, after = pattern.partition(":")
        port = after if colon else None
        ok = bool(_HOST_GLOB.fullmatch(host))
    if ok and port is not None and port != "*":
        ok = port.isascii() and port.isdigit() and 0 < int(port) < 65536
    if not ok:
        hint = " (write the host without a scheme)" if "://" in pattern else \
            " (a path is not part of a host)" if "/" in pattern else ""
        raise ValueError(f"{pattern!r} is not a host, host:port (1-65535) or host:* pattern{hint}")
    return host.lower(), None if port in (None, "*") else int(port)
