"""Keep credentials out of logs, errors and admin output.

A pre-signed upload URL carries its signature in the query string; the
platform's callback URL is itself the credential, its token somewhere in the
path (``/api/v1/waitpoints/tokens/<id>/complete``, ``/tokens/<id>/callback/<hash>``).
Both are bearer credentials for the hour they live. One rule covers every URL,
whatever its kind and however its scheme is spelt: what people see keeps the
scheme, the host and port, and the first two path segments; userinfo and the
fragment are dropped; each later path segment and the whole query become
REDACTED.
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"
KEPT_SEGMENTS = 2
# The parts of an absolute URL. The authority ends at a backslash too, as urllib3 and browsers read it,
# so a URL that hides its host behind one shows the host it would have reached.
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)//(?P<authority>[^/?#\\]*)(?P<path>[^?#]*)(?P<query>\?[^#]*)?", re.S)
_SEPARATOR = re.compile(r"([/\\])")
_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+", re.I)


def redact_url(url: str) -> str:
    """``url`` with userinfo, fragment, query and every path segment past the first two hidden."""
    parts = _URL.match(url)
    if parts is None:  # not an absolute URL: nothing in it is known to be harmless
        return REDACTED
    host = parts["authority"].rpartition("@")[2]  # userinfo (user:pass@) is dropped entirely
    # Segments at even indexes, separators between them; the first is what precedes the first separator
    # (nothing, in a well-formed URL). A backslash separates too, as the authority's end above.
    pieces = _SEPARATOR.split(parts["path"])
    for i in range(0, len(pieces), 2):
        if pieces[i] and not 0 < i // 2 <= KEPT_SEGMENTS:
            pieces[i] = REDACTED
    query = f"?{REDACTED}" if parts["query"] and parts["query"] != "?" else ""
    return f"{parts['scheme']}//{host}{''.join(pieces)}{query}"


def redact_text(text: str) -> str:
    """Every http(s) URL inside free text (an exception message, say) redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
