"""Webhook signatures: the receiver's entry point (``Verifier``) for both of Outpost's modes.

Kept free of any web framework so the receiver, the CLI and the tests share one
implementation. Everything here works on the raw request bytes: a signature is
over what was sent, never over re-serialised JSON.

Outpost default mode (``destwebhook``), as its operator configures it: see ``outpost.py``.
    By default ``{prefix}signature: v0=<hex>[,<hex>]`` with ``hex(HMAC-SHA256(secret, body))``,
    or the documented ``t=<unix>,v0=<hex>[,<hex>]`` over ``b"<t>." + body``.
    The secret is the HMAC key exactly as issued (a ``whsec_`` prefix included).
Standard Webhooks (Outpost's ``webhook_standard``):
    ``{prefix}id``, ``{prefix}timestamp`` and ``{prefix}signature: v1,<b64> [v1,<b64>]``
    over ``b"<id>.<timestamp>." + body``; the key is the base64 part of ``whsec_<b64>``.
    The prefix is ``webhook-`` unless the operator changed it.

During a secret rotation the sender signs with every live secret, and the
receiver may hold the new and the old one: any candidate may match any secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from fulfiller.intake.outpost import HeaderNames, OutpostScheme
from fulfiller.intake.refusal import Refusal, SignatureError, any_matches, check_time, malformed, parse_unix

__all__ = [
    "Refusal",
    "SignatureError",
    "Verifier",
    "describe",
    "sign_outpost",
    "sign_standard",
]

_WHSEC = "whsec_"


# --- keys ---------------------------------------------------------------------------


def _outpost_keys(secrets: Sequence[str]) -> tuple[bytes, ...]:
    """Outpost keys on the secret string as issued: its UTF-8 bytes, never decoded."""
    if isinstance(secrets, str):  # a bare str is a Sequence[str] of characters: refuse it
        raise TypeError("secrets must be a list of strings, not a string")
    if not secrets or any(not s for s in secrets):
        raise ValueError("at least one non-empty signing secret is required")
    return tuple(s.encode("utf-8") for s in secrets)


def _standard_key(secret: str) -> bytes:
    """``whsec_<base64>`` -> the decoded bytes (no prefix: the whole string is base64).

    Raises ``ValueError`` (a configuration error, not a bad request) when the
    secret is not base64 or decodes to nothing. Missing padding is tolerated,
    as the reference implementation does.
    """
    b64 = secret[len(_WHSEC):] if secret.startswith(_WHSEC) else secret
    b64 = b64.strip()
    try:
        key = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a Standard Webhooks secret is not valid base64 (expected whsec_<base64>)") from None
    if not key:
        raise ValueError("a Standard Webhooks secret decodes to an empty key")
    return key


def _standard_keys(secrets: Sequence[str]) -> tuple[bytes, ...]:
    if isinstance(secrets, str):
        raise TypeError("secrets must be a list of strings, not a string")
    if not secrets or any(not s for s in secrets):
        raise ValueError("at least one non-empty signing secret is required")
    return tuple(_standard_key(s) for s in secrets)


def _mac(key: bytes, content: bytes) -> bytes:
    return hmac.digest(key, content, "sha256")  # one call into OpenSSL: no HMAC object per request


_DOCUMENTED = OutpostScheme(HeaderNames.resolve("x-outpost-"))


def sign_outpost(body: bytes, secrets: Sequence[str], *, timestamp: int | None = None) -> str:
    """The ``{prefix}signature`` value Outpost sends with its default settings (current secret first);
    ``timestamp`` gives the documented ``t=`` form. For tests and benchmarks."""
    headers = _DOCUMENTED.sign(body, _outpost_keys(secrets), event_id="", topic="", timestamp=timestamp or 0,
                               timestamped=timestamp is not None)
    return headers[_DOCUMENTED.names.signature]


# --- Standard Webhooks ------------------------------------------------------------------


def _parse_standard(value: str) -> list[bytes]:
    """The raw digests of the ``v1,<base64>`` entries; other versions (``v1a``...) are skipped."""
    digests: list[bytes] = []
    for entry in value.split():
        version, sep, b64 = entry.partition(",")
        if not sep:
            raise malformed()
        if version != "v1":
            continue
        try:
            digest = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise malformed() from None
        if len(digest) != hashlib.sha256().digest_size:
            raise malformed()
        digests.append(digest)
    return digests


def _verify_standard_keys(
    body: bytes,
    headers: Mapping[str, str],
    keys: Sequence[bytes],
    prefix: str,
    tolerance_s: int,
    now: float | None,
) -> str:
    msg_id = headers.get(f"{prefix}id")
    ts_raw = headers.get(f"{prefix}timestamp")
    sig = headers.get(f"{prefix}signature")
    if sig is None:
        raise SignatureError("missing signature header", Refusal.NO_SIGNATURE_HEADER)
    if not sig.strip():
        raise SignatureError("empty signature header", Refusal.NO_SIGNATURE_HEADER)
    if msg_id is None or not msg_id.strip():
        raise SignatureError("missing id header", Refusal.MALFORMED_SIGNATURE)
    if ts_raw is None or not ts_raw.strip():
        raise SignatureError("missing timestamp header", Refusal.MISSING_TIMESTAMP)
    msg_id = msg_id.strip()
    ts = parse_unix(ts_raw)
    candidates = _parse_standard(sig)
    check_time(ts, tolerance_s, now)
    content = f"{msg_id}.{ts}.".encode() + body
    if not any_matches(candidates, [_mac(k, content) for k in keys]):
        raise SignatureError("no signature matches", Refusal.BAD_SIGNATURE)
    return msg_id


def _sign_standard_keys(body: bytes, keys: Sequence[bytes], *, msg_id: str, timestamp: int,
                        prefix: str) -> dict[str, str]:
    content = f"{msg_id}.{int(timestamp)}.".encode() + body
    sig = " ".join("v1," + base64.b64encode(_mac(k, content)).decode("ascii") for k in keys)
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": str(int(timestamp)), f"{prefix}signature": sig}


def sign_standard(
    body: bytes, secrets: Sequence[str], *, msg_id: str, timestamp: int, prefix: str = "webhook-"
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (current secret first). For tests and the CLI."""
    return _sign_standard_keys(body, _standard_keys(secrets), msg_id=msg_id, timestamp=timestamp, prefix=prefix)


# --- receiver entry point -------------------------------------------------------------


class Verifier:
    """Built once from the receiver config; verify() returns the event id found in the headers (or None).

    Keys are derived at construction so a bad secret fails at startup, not on
    the first delivery, and each request costs only the HMACs. In Outpost mode
    ``scheme`` holds the deployment's signing settings (Outpost's defaults under
    ``prefix`` when not given); with ``require_timestamp`` a signature that signs
    no timestamp is refused (a Standard Webhooks signature always signs one).
    """

    def __init__(self, mode: str, secrets: Sequence[str], prefix: str, tolerance_s: int,
                 require_timestamp: bool = False, *, scheme: OutpostScheme | None = None) -> None:
        if mode not in ("outpost", "standard"):
            raise ValueError(f"unknown signature mode {mode!r} (expected 'outpost' or 'standard')")
        self.mode = mode
        self.prefix = prefix.strip().lower()
        self.tolerance_s = tolerance_s
        self.require_timestamp = require_timestamp
        self.scheme = scheme or OutpostScheme(HeaderNames.resolve(self.prefix), require_timestamp=require_timestamp)
        self._keys = _outpost_keys(secrets) if mode == "outpost" else _standard_keys(secrets)

    def __repr__(self) -> str:  # never show keys
        return f"Verifier(mode={self.mode!r}, prefix={self.prefix!r}, secrets={len(self._keys)})"

    @property
    def topic_header(self) -> str | None:
        """The header that names an event's topic; None when the sender sends none."""
        return self.scheme.names.topic

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> str | None:
        """Raise ``SignatureError`` unless the request is signed; return the event id, if sent."""
        if self.mode == "standard":
            return _verify_standard_keys(body, headers, self._keys, self.prefix, self.tolerance_s, now)
        return self.scheme.verify(body, headers, self._keys, self.tolerance_s, now)

    def sign(self, body: bytes, *, event_id: str, topic: str, timestamp: int,
             timestamped: bool = False) -> dict[str, str]:
        """The headers a sender holding these secrets sends with ``body`` (current secret first)."""
        if self.mode == "outpost":
            return self.scheme.sign(body, self._keys, event_id=event_id, topic=topic, timestamp=timestamp,
                                    timestamped=timestamped)
        headers = _sign_standard_keys(body, self._keys, msg_id=event_id, timestamp=timestamp, prefix=self.prefix)
        if self.topic_header:
            headers[self.topic_header] = topic
        return headers

    def describe(self) -> list[str]:
        """The headers a delivery must carry, as ``name: shape`` lines (no secret, no signature)."""
        return describe(self.mode, self.prefix, self.scheme)


def describe(mode: str, prefix: str, scheme: OutpostScheme) -> list[str]:
    """The headers a delivery must carry in ``mode``, as ``name: shape`` lines; needs no secret, so
    ``check-config`` can say it before any is set."""
    if mode == "outpost":
        return scheme.describe()
    p = prefix.lower()
    return [f"{p}id: <message-id>", f"{p}timestamp: <unix>", f"{p}signature: v1,<base64>[ v1,<base64>]"]
