"""The refusal log: a bounded ring of refused deliveries, diagnosed within a budget, holding nothing secret."""

from __future__ import annotations

import json

from fulfiller.config import ReceiverConfig
from fulfiller.intake.refusal_log import MAX_HEADER_NAMES, MAX_NAME_CHARS, RefusalLog
from fulfiller.ops.testevent import signed_headers

SECRET = "whsec_refusal-log-secret-5e6f7a8b"
BODY = b'{"code":"MARKER-IN-THE-BODY-3c9d","projectId":"p-1"}'


def receiver() -> ReceiverConfig:
    return ReceiverConfig(secrets=[SECRET])


def unprefixed() -> dict[str, str]:
    """A delivery signed with the secret copied without its whsec_ prefix."""
    return signed_headers(BODY, [SECRET.removeprefix("whsec_")], topic="video.source_requested", event_id="evt_1")


async def refuse(log: RefusalLog, headers: dict[str, str], answered: str = "bad_signature", status: int = 401):
    return await log.record(body=BODY, body_bytes=len(BODY), headers=headers, http_status=status, answered=answered,
                            client="198.51.100.7", path="/webhooks/outpost")


async def test_a_signature_refusal_gets_the_doctors_code_and_advice() -> None:
    kept = await refuse(RefusalLog(receiver()), unprefixed())
    assert (kept.answered, kept.reason, kept.diagnosed) == ("bad_signature", "secret_variant", True)
    assert kept.codes[0] == "secret_variant"
    assert any("receiver.secrets[0]" in line and "whsec_" in line for line in kept.advice)
    shown = kept.to_json()
    assert shown["client"] == "198.51.100.7" and shown["path"] == "/webhooks/outpost"
    assert shown["body_bytes"] == len(BODY) and shown["http_status"] == 401
    assert "x-outpost-signature" in shown["headers"] and shown["at"].endswith("Z")


async def test_the_ring_keeps_the_last_refusals_newest_first() -> None:
    log = RefusalLog(receiver(), capacity=3)
    for n in range(5):
        await refuse(log, {f"x-try-{n}": "1"}, answered="too_large", status=413)
    assert [r.header_names for r in log.recent()] == [("x-try-4",), ("x-try-3",), ("x-try-2",)]


async def test_past_the_budget_a_refusal_is_kept_undiagnosed_under_the_code_it_was_answered() -> None:
    log = RefusalLog(receiver(), burst=2, per_s=0)
    kept = [await refuse(log, unprefixed()) for _ in range(4)]
    assert [(k.reason, k.diagnosed) for k in kept] == [("secret_variant", True)] * 2 + [("bad_signature", False)] * 2
    assert kept[-1].codes == ("bad_signature",) and kept[-1].advice == ()


async def test_other_refusals_are_not_diagnosed_and_spend_no_budget() -> None:
    log = RefusalLog(receiver(), burst=1, per_s=0)
    too_large = await refuse(log, unprefixed(), answered="too_large", status=413)
    assert (too_large.reason, too_large.diagnosed) == ("too_large", False)
    assert (await refuse(log, unprefixed())).diagnosed


async def test_header_names_are_bounded_and_no_value_body_or_secret_is_kept() -> None:
    headers = {**unprefixed(), **{f"x-{n:03d}-" + "a" * 200: "v" for n in range(100)}}
    kept = await refuse(RefusalLog(receiver()), headers)
    assert len(kept.header_names) == MAX_HEADER_NAMES
    assert all(len(name) <= MAX_NAME_CHARS for name in kept.header_names)
    shown = json.dumps(kept.to_json())
    signature = headers["x-outpost-signature"]
    for secret in (SECRET, SECRET.removeprefix("whsec_"), signature, "MARKER-IN-THE-BODY", "evt_1"):
        assert secret not in shown
