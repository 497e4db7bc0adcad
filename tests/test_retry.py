"""Retrying transient failures: backoff with jitter, Retry-After honoured, never past the deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from fulfiller.delivery.callback import post_callback
from fulfiller.delivery.transfer import Refused, transient_for
from fulfiller.retry import Transient, backoff, next_try, parse_retry_after


def test_the_first_wait_is_within_the_first_window() -> None:
    waits = [backoff(1, Transient("503"), base_s=0.01, cap_s=0.05) for _ in range(200)]
    assert all(0 <= w <= 0.01 for w in waits)
    assert len(set(waits)) > 1  # jittered: workers retrying together spread out


def test_the_window_doubles_with_each_failure_up_to_the_cap() -> None:
    assert max(backoff(3, Transient("503"), base_s=0.01, cap_s=10) for _ in range(500)) > 0.02
    assert all(backoff(3, Transient("503"), base_s=0.01, cap_s=10) <= 0.04 for _ in range(500))
    assert all(backoff(n, Transient("503"), base_s=0.005, cap_s=0.02) <= 0.02 for n in range(1, 40))


def test_retry_after_is_honoured_over_a_shorter_backoff() -> None:
    assert backoff(1, Transient("429", http_status=429, retry_after=0.3), base_s=0.001, cap_s=0.01) == 0.3


def test_no_next_try_when_the_wait_would_reach_the_deadline() -> None:
    now = 1_000.0
    assert next_try(1, Transient("503"), deadline=now + 5, base_s=0.01, cap_s=0.05, now=now) is not None
    assert next_try(1, Transient("503", retry_after=30), deadline=now + 5, base_s=0.01, cap_s=0.05, now=now) is None
    # A deadline already past: no retry however short the wait.
    assert next_try(1, Transient("503"), deadline=now - 1, base_s=0.01, cap_s=0.05, now=now) is None


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
