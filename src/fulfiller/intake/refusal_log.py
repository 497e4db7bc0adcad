"""The last refused deliveries, kept in memory for operators (``GET /admin/refusals``, the console).

A 401 tells the sender only the public code; the operator needs the doctor's
answer (which secret spelling, which re-serialised body, which clock). Each
entry keeps what a support request needs and nothing a leak could use: time,
client address, path, header names, body size, reason codes and the doctor's
advice (which names secrets by index and headers by name). The body is held
only while the doctor reads it.

The doctor computes many HMACs and re-serialises the body, so a flood of bad
requests must not buy a diagnosis each: diagnoses draw from a token bucket,
and run on a thread so the event loop goes on acking good deliveries. An
undiagnosed refusal is still kept and counted, under the code it was answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fulfiller.config import ReceiverConfig
from fulfiller.intake.doctor import diagnose
from fulfiller.intake.refusal import Refusal

__all__ = ["CAPACITY", "RefusalLog", "RefusedDelivery"]

log = logging.getLogger("fulfiller.receiver")

CAPACITY = 100
# Diagnoses: a burst of this many, then this many a second (a delivery storm from a misconfigured
# Outpost still gets a diagnosis every second; an attacker's flood costs at most that).
DIAGNOSIS_BURST = 10
DIAGNOSES_PER_S = 1.0
# Header names are the sender's to choose: what is kept of them is bounded.
MAX_HEADER_NAMES = 40
MAX_NAME_CHARS = 64
_SIGNATURE_CODES = frozenset(Refusal)


@dataclass(frozen=True)
class RefusedDelivery:
    """One refused delivery. ``answered`` is the code the sender was told; ``reason`` the doctor's answer
    when it diagnosed the request, else ``answered``; ``codes`` every code that applies, ``reason`` first."""

    at: float
    client: str | None
    path: str
    header_names: tuple[str, ...]
    body_bytes: int
    http_status: int
    answered: str
    reason: str
    codes: tuple[str, ...]
    advice: tuple[str, ...]
    diagnosed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "at": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "client": self.client, "path": self.path, "headers": list(self.header_names),
            "body_bytes": self.body_bytes, "http_status": self.http_status, "answered": self.answered,
            "reason": self.reason, "codes": list(self.codes), "advice": list(self.advice),
            "diagnosed": self.diagnosed,
        }


class _Bucket:
    """A token bucket: ``take`` is true at most ``burst`` times at once, then ``rate`` times a second."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RefusalLog:
    """The ring of the last ``capacity`` refused deliveries, newest last, and the doctor's budget."""

    def __init__(self, receiver: ReceiverConfig, *, capacity: int = CAPACITY, burst: int = DIAGNOSIS_BURST,
                 per_s: float = DIAGNOSES_PER_S) -> None:
        self.receiver = receiver
        self.capacity = capacity
        self._ring: deque[RefusedDelivery] = deque(maxlen=capacity)
        self._budget = _Bucket(burst, per_s)

    async def record(self, *, body: bytes, body_bytes: int, headers: Mapping[str, str], http_status: int,
                     answered: str, client: str | None, path: str) -> RefusedDelivery:
        """Keep one refusal, with the doctor's diagnosis when it is a signature refusal and the budget allows."""
        reason, codes, advice, diagnosed = answered, (answered,), (), False
        if answered in _SIGNATURE_CODES and self._budget.take():
            try:
                found = await asyncio.to_thread(diagnose, body, headers, self.receiver)
            except Exception:  # a bug in the doctor must not cost the sender its answer
                log.exception("the signature doctor failed", extra={"reason": answered})
            else:
                if not found.ok:  # ok: its timestamp was at the tolerance's edge and is inside it now
                    reason, codes, advice, diagnosed = found.code, tuple(found.codes), tuple(found.advice), True
        names = tuple(sorted({name[:MAX_NAME_CHARS] for name in headers})[:MAX_HEADER_NAMES])
        entry = RefusedDelivery(time.time(), client, path[:200], names, body_bytes, http_status, answered, reason,
                                codes, advice, diagnosed)
        self._ring.append(entry)
        return entry

    def recent(self) -> list[RefusedDelivery]:
        """The kept refusals, newest first."""
        return list(reversed(self._ring))
