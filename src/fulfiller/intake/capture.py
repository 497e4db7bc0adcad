"""A captured HTTP request, read back from what operators can copy: for ``fulfiller verify``.

Accepted: plain HTTP/1.1 text (a proxy log: request line, headers, a blank line,
the body as sent); ``curl -v`` output (the ``> `` lines; curl does not print the
body, so it comes from the lines without curl's markers or from a separate
file); a JSON object with ``headers`` and ``body`` (a portal's copy); or header
lines (``Name: value``) and the body in separate files. Errors name a line
number, never a line: a header line may hold a signature.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["CaptureError", "Captured", "parse_headers", "parse_request"]

_REQUEST_LINE = re.compile(r"^[A-Z]+ \S+ HTTP/[0-9.]+$")
_CURL_NOISE = re.compile(r"^(?:[*<>].*|[{}] \[[0-9]+ bytes data\])$")  # info, response, request, data markers


class CaptureError(ValueError):
    """A capture that cannot be read as a request (safe to show: it quotes nothing of the request)."""


@dataclass(frozen=True)
class Captured:
    """A request's headers (names in lowercase) and body bytes; ``note`` says what was reconstructed."""

    headers: dict[str, str]
    body: bytes
    note: str | None = None


def parse_headers(text: str) -> dict[str, str]:
    """``Name: value`` lines (a ``> `` prefix and a request line are skipped); lowercase names."""
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.removeprefix(">").strip()
        if not line or _REQUEST_LINE.match(line):
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise CaptureError(f"line {number} is not a 'Name: value' header line")
        headers[name.strip().lower()] = value.strip()
    return headers


def parse_request(data: bytes, body: bytes | None = None) -> Captured:
    """The request in ``data``; ``body``, when given, is the body (for a capture that lacks it)."""
    text = data.decode("utf-8", errors="replace")
    stripped = data.lstrip()
    if stripped.startswith(b"{"):
        return _portal(stripped, body)
    lines = text.splitlines()
    if any(line.startswith(">") for line in lines):
        head = "\n".join(line for line in lines if line.startswith(">"))
        rest = [line for line in lines if line and not _CURL_NOISE.match(line)]
        found = "\n".join(rest).encode("utf-8")
        return _finish(parse_headers(head), body if body is not None else found)
    split = re.search(rb"\r?\n\r?\n", data)
    head_bytes, found_body = (data[:split.start()], data[split.end():]) if split else (data, b"")
    if not head_bytes.strip():
        raise CaptureError("the capture holds no request headers")
    return _finish(parse_headers(head_bytes.decode("latin-1")), body if body is not None else found_body)


def _finish(headers: dict[str, str], body: bytes) -> Captured:
    """Trim what an editor adds after the body (a final newline) when Content-Length says it is not part of it."""
    length = headers.get("content-length", "")
    if length.isdigit():
        size = int(length)
        if len(body) > size and not body[size:].strip():
            body = body[:size]
        elif len(body) < size and not body:
            raise CaptureError(f"the capture has no body but Content-Length is {size} (curl -v does not print it):"
                               " give the body with --body FILE")
    return Captured(headers, body)


def _portal(data: bytes, body: bytes | None) -> Captured:
    try:
        copy = json.loads(data)
    except ValueError:
        raise CaptureError("the capture starts with '{' but is not JSON") from None
    if not isinstance(copy, dict) or not isinstance(copy.get("headers"), dict) or "body" not in copy:
        raise CaptureError("a JSON capture needs a 'headers' object and a 'body'")
    headers = {str(k).lower(): str(v) for k, v in copy["headers"].items()}
    if body is not None:
        return Captured(headers, body)
    if isinstance(copy["body"], str):
        return Captured(headers, copy["body"].encode("utf-8"))
    # Outpost sends its event data as compact JSON; a copy that shows it as an object is re-serialised so.
    compact = json.dumps(copy["body"], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Captured(headers, compact, note="the body was given as a JSON value, not as text: it is re-serialised "
                                           "compactly, as Outpost sends it")
