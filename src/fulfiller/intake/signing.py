"""Webhook signature schemes: Outpost's default (``v0=`` hex) and Standard Webhooks.

Kept free of any web framework so the receiver, the CLI and the tests share one
implementation. Everything here works on the raw request bytes: a signature is
over what was sent, never over re-serialised JSON.

Outpost default mode (``destwebhook``):
    ``{prefix}signature: v0=<hex>[,<hex>]`` with ``hex(HMAC-SHA256(secret, body))``,
    or the timestamped template ``t=<unix>,v0=<hex>[,<hex>]`` over ``b"<t>." + body``.
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
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum

__all__ = [
    "Refusal",
    "SignatureError",
    "Verifier",
    "sign_outpost",
    "sign_standard",
]

_HEX = frozenset("0123456789abcdef")
_HEX_LEN = 2 * hashlib.sha256().digest_size  # 64
_WHSEC = "whsec_"


class Refusal(StrEnum):
    """Why a signature was refused, as the receiver answers it: the public reason codes, which tell the
    sender what to fix without telling it anything about the secrets."""

    NO_SIGNATURE_HEADER = "no_signature_header"
    MALFORMED_SIGNATURE = "malformed_signature"
    TIMESTAMP_OUTSIDE_TOLERANCE = "timestamp_outside_tolerance"
    MISSING_TIMESTAMP = "missing_timestamp"
    BAD_SIGNATURE = "bad_signature"


class SignatureError(Exception):
    """Why a request's signature was refused (short, safe to log: never contains a secret or signature).

    ``code`` is the public reason code; the message may say more (an empty header, a missing id header).
    """

    def __init__(self, message: str, code: Refusal) -> None:
        super().__init__(message)
        self.code = code


def _malformed() -> SignatureError:
    return SignatureError("malformed signature header", Refusal.MALFORMED_SIGNATURE)


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


def _any_matches(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """True when any candidate equals any expected digest.

    Every pair is compared with ``compare_digest`` and the loop never exits
    early, so the time taken does not reveal which (if any) pair matched.
    """
    matched = False
    for cand in candidates:
        for exp in expected:
            matched |= hmac.compare_digest(cand, exp)
    return matched


def _check_time(ts: int, tolerance_s: int, now: float | None) -> None:
    """Refuse a signed timestamp too far from now, in either direction (replay, clock skew)."""
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        raise SignatureError("timestamp outside tolerance", Refusal.TIMESTAMP_OUTSIDE_TOLERANCE)


def _parse_unix(value: str) -> int:
    """Unix seconds as ASCII digits only.

    ``int()`` alone would accept ``"1_0"``, ``"+1"`` or non-ASCII digits, and a
    huge number would overflow the float arithmetic of the tolerance check.
    """
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise _malformed()
    return int(value)


# --- Outpost default mode -------------------------------------------------------------


def _parse_outpost(value: str) -> tuple[int | None, list[bytes]]:
    """Split ``[t=<unix>,]v0=<hex>[,<hex>...]`` into (timestamp, lowercase hex candidates).

    Lenient on what senders and proxies vary (case of hex and keys, spaces around
    ``,`` and ``=``, ``t=`` position, a repeated ``v0=``); strict on everything
    else, so a garbled header is reported as malformed rather than as a mismatch.
    """
    ts: int | None = None
    candidates: list[bytes] = []
    seen_v0 = False
    for raw in value.split(","):
        part = raw.strip()
        if "=" in part:
            key, _, val = part.partition("=")
            key, val = key.strip().lower(), val.strip()
            if key == "t" and ts is None:
                ts = _parse_unix(val)
                continue
            if key != "v0":
                raise _malformed()
            seen_v0 = True
            part = val
        elif not seen_v0:  # a bare signature only continues a v0= list
            raise _malformed()
        sig = part.lower()
        if len(sig) != _HEX_LEN or not _HEX.issuperset(sig):
            raise _malformed()
        candidates.append(sig.encode("ascii"))
    if not candidates:
        raise _malformed()
    return ts, candidates


def _verify_outpost_keys(
    body: bytes, header: str | None, keys: Sequence[bytes], tolerance_s: int, now: float | None,
    require_timestamp: bool = False,
) -> None:
    if header is None:
        raise SignatureError("missing signature header", Refusal.NO_SIGNATURE_HEADER)
    if not header.strip():
        raise SignatureError("empty signature header", Refusal.NO_SIGNATURE_HEADER)
    ts, candidates = _parse_outpost(header)
    if ts is None and require_timestamp:
        raise SignatureError("missing timestamp", Refusal.MISSING_TIMESTAMP)
    content = body
    if ts is not None:
        _check_time(ts, tolerance_s, now)
        content = f"{ts}.".encode("ascii") + body
    expected = [_mac(k, content).hex().encode("ascii") for k in keys]
    if not _any_matches(candidates, expected):
        raise SignatureError("no signature matches", Refusal.BAD_SIGNATURE)


def sign_outpost(body: bytes, secrets: Sequence[str], *, timestamp: int | None = None) -> str:
    """The ``{prefix}signature`` value Outpost would send (current secret first). For tests and the CLI."""
    keys = _outpost_keys(secrets)
    content = body if timestamp is None else f"{int(timestamp)}.".encode("ascii") + body
    sigs = ",".join(_mac(k, content).hex() for k in keys)
    return f"v0={sigs}" if timestamp is None else f"t={int(timestamp)},v0={sigs}"


# --- Standard Webhooks ------------------------------------------------------------------


def _parse_standard(value: str) -> list[bytes]:
    """The raw digests of the ``v1,<base64>`` entries; other versions (``v1a``...) are skipped."""
    digests: list[bytes] = []
    for entry in value.split():
        version, sep, b64 = entry.partition(",")
        if not sep:
            raise _malformed()
        if version != "v1":
            continue
        try:
            digest = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed() from None
        if len(digest) != hashlib.sha256().digest_size:
            raise _malformed()
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
    ts = _parse_unix(ts_raw)
    candidates = _parse_standard(sig)
    _check_time(ts, tolerance_s, now)
    content = f"{msg_id}.{ts}.".encode() + body
    if not _any_matches(candidates, [_mac(k, content) for k in keys]):
        raise SignatureError("no signature matches", Refusal.BAD_SIGNATURE)
    return msg_id


def sign_standard(
    body: bytes, secrets: Sequence[str], *, msg_id: str, timestamp: int, prefix: str = "webhook-"
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` (current secret first). For tests and the CLI."""
    keys = _standard_keys(secrets)
    content = f"{msg_id}.{int(timestamp)}.".encode() + body
    sig = " ".join("v1," + base64.b64encode(_mac(k, content)).decode("ascii") for k in keys)
    return {f"{prefix}id": msg_id, f"{prefix}timestamp": str(int(timestamp)), f"{prefix}signature": sig}


# --- receiver entry point -------------------------------------------------------------


class Verifier:
    """Built once from the receiver config; verify() returns the event id found in the headers (or None).

    Keys are derived at construction so a bad secret fails at startup, not on
    the first delivery, and each request costs only the HMACs. With
    ``require_timestamp`` an Outpost signature without ``t=`` is refused (a Standard
    Webhooks signature always carries its timestamp).
    """

    def __init__(self, mode: str, secrets: Sequence[str], prefix: str, tolerance_s: int,
                 require_timestamp: bool = False) -> None:
        if mode not in ("outpost", "standard"):
            raise ValueError(f"unknown signature mode {mode!r} (expected 'outpost' or 'standard')")
        self.mode = mode
        self.prefix = prefix.strip().lower()
        self.tolerance_s = tolerance_s
        self.require_timestamp = require_timestamp
        self._keys = _outpost_keys(secrets) if mode == "outpost" else _standard_keys(secrets)

    def __repr__(self) -> str:  # never show keys
        return f"Verifier(mode={self.mode!r}, prefix={self.prefix!r}, secrets={len(self._keys)})"

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> str | None:
        """Raise ``SignatureError`` unless the request is signed; return the event id, if sent."""
        if self.mode == "standard":
            return _verify_standard_keys(body, headers, self._keys, self.prefix, self.tolerance_s, now)
        header = headers.get(f"{self.prefix}signature")
        _verify_outpost_keys(body, header, self._keys, self.tolerance_s, now, self.require_timestamp)
        return headers.get(f"{self.prefix}event-id") or None
