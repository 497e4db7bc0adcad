"""Why a signature is refused, and the checks every signing scheme shares.

The reason codes are public (the receiver answers them): they tell a sender
what to fix without telling it anything about the secrets. The checks compare
in constant time and read timestamps strictly.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from enum import StrEnum

__all__ = ["Refusal", "SignatureError", "any_matches", "check_time", "malformed", "parse_unix"]


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


def malformed(message: str = "malformed signature header") -> SignatureError:
    return SignatureError(message, Refusal.MALFORMED_SIGNATURE)


def any_matches(candidates: Sequence[bytes], expected: Sequence[bytes]) -> bool:
    """True when any candidate equals any expected digest.

    Every pair is compared with ``compare_digest`` and the loop never exits
    early, so the time taken does not reveal which (if any) pair matched.
    """
    matched = False
    for cand in candidates:
        for exp in expected:
            matched |= hmac.compare_digest(cand, exp)
    return matched


def check_time(ts: int, tolerance_s: int, now: float | None) -> None:
    """Refuse a signed timestamp too far from now, in either direction (replay, clock skew); 0 = no check."""
    current = time.time() if now is None else now
    if tolerance_s and abs(current - ts) > tolerance_s:
        raise SignatureError("timestamp outside tolerance", Refusal.TIMESTAMP_OUTSIDE_TOLERANCE)


def parse_unix(value: str) -> int:
    """Unix seconds as ASCII digits only.

    ``int()`` alone would accept ``"1_0"``, ``"+1"`` or non-ASCII digits, and a
    huge number would overflow the float arithmetic of the tolerance check.
    """
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        raise malformed()
    return int(value)
