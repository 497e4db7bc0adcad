"""Keep credentials out of logs, errors and admin output.

A pre-signed upload URL carries its signature in the query string; the
platform's callback URL carries its token in the path. Both are bearer
credentials for the hour they live, so anything we show people keeps the
scheme, host and the harmless parts of the path, and drops the rest.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
_SENSITIVE_PARAM = re.compile(r"signature|credential|token|secret|key|sig|auth|password|session", re.I)
# Path segments that are credentials: the platform's waitpoint tokens, and the
# segment following a "tokens" folder (Trigger.dev's callback layout).
_TOKEN_SEGMENT = re.compile(r"^(waitpoint_|tok_|whsec_)", re.I)
_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` with credential-bearing query values and path tokens replaced by REDACTED."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range or not a number
    except ValueError:
        return REDACTED
    segments = parts.path.split("/")
    for i, seg in enumerate(segments):
        if _TOKEN_SEGMENT.match(seg) or (i > 0 and segments[i - 1].lower() == "tokens" and seg):
            segments[i] = REDACTED
    query = [
        (k, REDACTED if _SENSITIVE_PARAM.search(k) else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    netloc = parts.hostname or ""
    if port:
        netloc = f"{netloc}:{port}"
    # userinfo (user:pass@) is dropped entirely
    return urlunsplit((parts.scheme, netloc, "/".join(segments), urlencode(query, safe=REDACTED), ""))


def redact_text(text: str) -> str:
    """Every URL inside free text (an exception message, say) redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
