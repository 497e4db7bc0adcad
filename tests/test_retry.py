"""Retrying transient failures: backoff with jitter, Retry-After honoured, never past the deadline."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace

import httpx
import pytest

from fulfiller import retry
from fulfiller.delivery.callback import post_callback
from fulfiller.delivery.transfer import Refused, transient_for
from fulfiller.retry import Transient, parse_retry_after, with_retries


class Flaky:
    """Fails with ``failures`` (in order), then returns "ok"; records when each call started."""

    def __init__(self, *failures: BaseException):
        self.failures = list(failures)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(time.monotonic())
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def test_transient_failures_are_retried_until_success() -> None:
    fn = Flaky(Transient("503"), Transient("503"))
    waits: list[float] = []
    result = await with_retries(fn, deadline=time.time() + 10, base_s=0.01, cap_s=0.05,
                                on_retry=lambda exc, wait: waits.append(wait))
    assert result == "ok"
    assert len(fn.calls) == 3
    assert len(waits) == 2 and all(0 <= w <= 0.05 for w in waits)


async def test_other_errors_are_not_retried() -> None:
    fn = Flaky(ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        await with_retries(fn, deadline=time.time() + 10, base_s=0.01, cap_s=0.05)
    assert len(fn.calls) == 1


async def test_retry_after_is_honoured_over_a_shorter_backoff() -> None:
    fn = Flaky(Transient("429", http_status=429, retry_after=0.3))
    waits: list[float] = []
    await with_retries(fn, deadline=time.time() + 10, base_s=0.001, cap_s=0.01,
                       on_retry=lambda exc, wait: waits.append(wait))
    assert waits == [pytest.approx(0.3)]
    assert fn.calls[1] - fn.calls[0] >= 0.29


async def test_backoff_is_capped() -> None:
    fn = Flaky(*[Transient("503") for _ in range(8)])
    waits: list[float] = []
    await with_retries(fn, deadline=time.time() + 10, base_s=0.005, cap_s=0.02,
                       on_retry=lambda exc, wait: waits.append(wait))
    assert len(waits) == 8 and max(waits) <= 0.02


async def test_it_stops_before_the_deadline_rather_than_sleep_past_it() -> None:
    fn = Flaky(*[Transient("503") for _ in range(1000)])
    started = time.time()
    deadline = started + 0.4
    with pytest.raises(Transient):
        await with_retries(fn, deadline=deadline, base_s=0.02, cap_s=0.05)
    # Gave up at the deadline (give or take scheduling on a loaded machine), not retried on.
    assert time.time() < deadline + 0.3
    assert len(fn.calls) >= 3  # and did use the time there was
    assert all(t - fn.calls[0] < 0.4 for t in fn.calls)


async def test_a_retry_after_reaching_past_the_deadline_stops_at_once() -> None:
    fn = Flaky(Transient("503", http_status=503, retry_after=30))
    started = time.monotonic()
    with pytest.raises(Transient, match="503"):
        await with_retries(fn, deadline=time.time() + 5, base_s=0.01, cap_s=0.05)
    assert len(fn.calls) == 1
    assert time.monotonic() - started < 1  # no 30 s sleep into a deadline it would miss


async def test_a_deadline_already_past_still_makes_one_try_and_no_retry() -> None:
    fn = Flaky(Transient("503"))
    with pytest.raises(Transient):
        await with_retries(fn, deadline=time.time() - 1, base_s=0.01, cap_s=0.05)
    assert len(fn.calls) == 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("7", 7.0), ("0", 0.0), ("1.5", 1.5), ("-3", 0.0), ("soon", None), ("", None),
     ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],  # a date in the past: go now
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    assert parse_retry_after(header) == pytest.approx(120, abs=2)


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [(429, {"Retry-After": "7"}, 7.0), (503, {"Retry-After": "2"}, 2.0), (500, {}, None), (502, {}, None)],
)
def test_429_and_5xx_answers_are_transient_with_their_retry_after(
    status: int, headers: dict[str, str], retry_after: float | None
) -> None:
    transient = transient_for(status, headers.get("Retry-After"), "upload")
    assert transient is not None
    assert (transient.http_status, transient.retry_after) == (status, retry_after)


@pytest.mark.parametrize("status", [200, 400, 403, 404, 409, 410, 411])
def test_other_answers_are_not_transient(status: int) -> None:
    assert transient_for(status, None, "upload") is None


# -- the callback: which failures may have reached the platform -------------------------------------


async def _post(raise_or_status: BaseException | int, headers: dict[str, str] | None = None) -> int:
    def handle(request: httpx.Request) -> httpx.Response:
        if isinstance(raise_or_status, BaseException):
            raise raise_or_status
        return httpx.Response(raise_or_status, headers=headers or {}, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as c:
        return await post_callback(c, "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_x/complete",
                                   {"skip": True, "reason": "no_route"})


@pytest.mark.parametrize("status", [200, 202, 409, 410])
async def test_callback_final_answers_are_returned(status: int) -> None:
    assert await _post(status) == status


async def test_callback_5xx_is_transient_with_its_retry_after() -> None:
    with pytest.raises(Transient) as caught:
        await _post(503, {"Retry-After": "4"})
    assert (caught.value.http_status, caught.value.retry_after) == (503, 4.0)
    assert caught.value.maybe_delivered is False  # answered: we know it was not taken


async def test_callback_other_4xx_is_refused() -> None:
    with pytest.raises(Refused) as caught:
        await _post(400)
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("error", "maybe_delivered"),
    [
        (httpx.ConnectError("refused"), False),  # never left this machine
        (httpx.ConnectTimeout("slow connect"), False),
        (httpx.ReadTimeout("no answer"), True),  # sent; the platform may have completed the token
        (httpx.RemoteProtocolError("peer closed connection"), True),
    ],
)
async def test_callback_transport_errors_say_whether_the_request_may_have_landed(
    error: httpx.HTTPError, maybe_delivered: bool
) -> None:
    with pytest.raises(Transient) as caught:
        await _post(error)
    assert caught.value.http_status is None
    assert caught.value.maybe_delivered is maybe_delivered


async def test_a_wait_that_overruns_the_deadline_starts_no_new_try(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a busy machine a wait can end later than asked: past the deadline, no new try starts."""
    clock = [1_000.0]
    monkeypatch.setattr(retry, "time", SimpleNamespace(time=lambda: clock[0]))
    fn = Flaky(Transient("503"), Transient("503"))

    def overrun(exc: Transient, wait_s: float) -> None:  # the retry was planned in time; the wait runs over
        clock[0] += 10

    with pytest.raises(Transient, match="503"):
        await with_retries(fn, deadline=clock[0] + 5, base_s=0.001, cap_s=0.002, on_retry=overrun)
    assert len(fn.calls) == 1
