"""Retrying transient failures with backoff and jitter, never past the job's deadline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

T = TypeVar("T")


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


class _Wait:
    """Full-jitter exponential backoff, but never shorter than the peer's Retry-After."""

    def __init__(self, base_s: float, cap_s: float):
        self._jitter = wait_random_exponential(multiplier=base_s, max=cap_s)

    def __call__(self, state: RetryCallState) -> float:
        wait = self._jitter(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Transient) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    base_s: float,
    cap_s: float,
    on_retry: Callable[[Transient, float], None] | None = None,
) -> T:
    """Run ``fn`` until it succeeds or raises something other than Transient.

    Stops (re-raising the last Transient) when the next wait would end past
    ``deadline``: work that cannot finish in time is not started.
    """

    def stop(state: RetryCallState) -> bool:
        return time.time() + (state.upcoming_sleep or 0.0) >= deadline

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(exc, Transient):
            on_retry(exc, state.upcoming_sleep)

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(Transient),
        wait=_Wait(base_s, cap_s),
        stop=stop,
        before_sleep=before_sleep,
        reraise=True,
    )
    last: Transient | None = None

    async def call() -> T:
        # tenacity decides sync vs async by inspecting the callable; a lambda
        # returning a coroutine would look sync, so always hand it a coroutine function.
        nonlocal last
        if last is not None and time.time() >= deadline:  # the wait overran the deadline (a busy machine)
            raise last
        try:
            return await fn()
        except Transient as exc:
            last = exc
            raise

    return await retrying(call)
