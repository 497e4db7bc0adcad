"""Backoff between tries of a transient failure: full jitter, the peer's Retry-After honoured, never past
the job's deadline.

A job does not wait in its worker between tries: it goes back to the queue until ``next_try``, and the
try number comes from what the job stored, so one backoff rule holds across runs and processes.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from tenacity import RetryCallState, wait_random_exponential


class Transient(Exception):
    """A failure worth trying again: connection error, timeout, 429, 5xx, a catalog outage."""

    def __init__(self, message: str, *, http_status: int | None = None, retry_after: float | None = None,
                 maybe_delivered: bool = False):
        super().__init__(message)
        self.http_status = http_status
        self.retry_after = retry_after
        # True when the request may have reached the peer though no answer was read (a timeout, a cut).
        self.maybe_delivered = maybe_delivered


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date (RFC 9110 allows both)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff(failed_tries: int, exc: Transient, *, base_s: float, cap_s: float) -> float:
    """Seconds to wait after the ``failed_tries``-th transient failure in a row (1 for the first).

    tenacity's full jitter: a random wait in a window that doubles with each failure, from ``base_s``
    up to ``cap_s``; never shorter than the peer's Retry-After.
    """
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, failed_tries)
    wait = float(wait_random_exponential(multiplier=base_s, max=cap_s)(state))
    if exc.retry_after is not None:
        wait = max(wait, exc.retry_after)
    return wait


def next_try(failed_tries: int, exc: Transient, *, deadline: float, base_s: float, cap_s: float,
             now: float | None = None) -> float | None:
    """The wait before the next try, or None when it would end at or past ``deadline``: work that cannot
    finish in time is not started."""
    wait = backoff(failed_tries, exc, base_s=base_s, cap_s=cap_s)
    return None if (time.time() if now is None else now) + wait >= deadline else wait
