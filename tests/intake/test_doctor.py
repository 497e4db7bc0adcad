"""The signature doctor: one captured request per reason code gets exactly that code.

Each request is signed with the real signing code (``Verifier.sign``,
``sign_outpost``, ``sign_standard``) and then given one deliberate fault, as
operators meet them: a secret copied without its prefix, a proxy that
re-serialised the JSON, a clock off, the other mode, another algorithm.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fulfiller.config import ReceiverConfig
from fulfiller.intake.doctor import CODES, diagnose
from fulfiller.intake.signing import sign_outpost, sign_standard

NOW = 1_700_000_000
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # Standard Webhooks' example: usable in both modes
PREVIOUS = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
STRANGER = "whsec_c29tZW9uZSBlbHNlJ3Mgc2VjcmV0IQ=="
BODY = json.dumps({"projectId": "p-1", "code": "ACME-123", "note": "café"}, separators=(",", ":"),
                  ensure_ascii=False).encode("utf-8")  # compact, unescaped: as Outpost sends it
EVENT_ID, TOPIC = "evt_2hX9q3Zk", "video.source_requested"


def receiver(secrets: list[str] | None = None, **settings: object) -> ReceiverConfig:
    return ReceiverConfig(secrets=secrets or [SECRET], **settings)


def outpost(secrets: list[str] | None = None, *, timestamp: int = NOW, timestamped: bool = True,
            body: bytes = BODY, **settings: object) -> dict[str, str]:
    """The headers an Outpost configured with ``settings`` sends."""
    return receiver(secrets, **settings).verifier().sign(body, event_id=EVENT_ID, topic=TOPIC, timestamp=timestamp,
                                                         timestamped=timestamped)


def renamed(headers: dict[str, str], old: str, new: str | None) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k != old}
    if new:
        out[new] = headers[old]
    return out


@dataclass
class Case:
    code: str
    headers: Callable[[], dict[str, str]]
    config: ReceiverConfig = field(default_factory=receiver)
    body: bytes = BODY
    advice: str = ""  # a phrase the advice must hold


CASES = {
    "ok": Case("ok", lambda: outpost(), advice="verifies with receiver.secrets[0]"),
    "ok after a rotation, with the previous secret": Case(
        "ok", lambda: outpost([PREVIOUS]), receiver([SECRET, PREVIOUS]), advice="receiver.secrets[1] (the previous"),
    "no signature header at all": Case(
        "no_signature_header", lambda: renamed(outpost(), "x-outpost-signature", None),
        advice="no x-outpost-signature header, and no signature-like header"),
    "the signature under another prefix": Case(
        "no_signature_header", lambda: renamed(outpost(), "x-outpost-signature", "x-custom-signature"),
        advice="signature-like headers present: x-custom-signature (another prefix?)"),
    "a garbled header": Case(
        "malformed_signature", lambda: {"x-outpost-signature": "v0=not-hex-at-all"},
        advice="x-outpost-signature: v0=<hex>[,<hex>]"),
    "signed an hour ago": Case(
        "timestamp_outside_tolerance", lambda: outpost(timestamp=NOW - 3600),
        advice="signed 3600 seconds ago, beyond timestamp_tolerance_s (300 s) (otherwise it verifies)"),
    "no timestamp where one is required": Case(
        "missing_timestamp", lambda: {"x-outpost-signature": sign_outpost(BODY, [SECRET])},
        receiver(require_timestamp=True), advice="require_timestamp is set (otherwise it verifies)"),
    "the secret copied without its whsec_ prefix": Case(
        "secret_variant", lambda: outpost(), receiver([SECRET.removeprefix("whsec_")]),
        advice="the secret in receiver.secrets[0] verifies when its whsec_ prefix is kept: Outpost uses the whole "
               "string as the key"),
    "a sender keying on the secret's decoded base64 part": Case(
        "secret_variant", lambda: receiver().scheme().sign(BODY, [base64.b64decode(SECRET.removeprefix("whsec_"))],
                                                           event_id=EVENT_ID, topic=TOPIC, timestamp=NOW),
        advice="the secret in receiver.secrets[0] verifies when its base64 part is decoded"),
    "a proxy re-serialised the JSON": Case(
        "body_modified", lambda: outpost(), body=json.dumps(json.loads(BODY)).encode(),
        advice="serialised differently"),
    "Outpost signs with hmac-sha1 in base64": Case(
        "other_algorithm", lambda: outpost(signature_algorithm="hmac-sha1", signature_encoding="base64"),
        advice="it verifies with hmac-sha1/base64: set receiver.signature_algorithm: hmac-sha1"),
    "a Standard Webhooks delivery, receiver in outpost mode": Case(
        "other_mode", lambda: sign_standard(BODY, [SECRET], msg_id=EVENT_ID, timestamp=NOW),
        advice="this is a Standard Webhooks delivery (webhook-signature) and receiver.mode is outpost"),
    "an Outpost delivery, receiver in standard mode": Case(
        "other_mode", lambda: outpost(), receiver(mode="standard"), advice="receiver.mode is standard"),
    "another secret signed it": Case(
        "wrong_secret", lambda: outpost([STRANGER]), advice="no configured secret (receiver.secrets[0]) signed it"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_fault_gets_its_code_and_says_the_fix(case: Case) -> None:
    diagnosis = diagnose(case.body, case.headers(), case.config, now=NOW)
    assert diagnosis.code == case.code, diagnosis
    assert diagnosis.codes[0] == case.code and diagnosis.ok == (case.code == "ok")
    assert set(diagnosis.codes) <= {*CODES, "ok"}
    assert any(case.advice in line for line in diagnosis.advice), diagnosis.advice


def test_every_reason_code_has_a_case() -> None:
    assert {case.code for case in CASES.values()} == {*CODES, "ok"}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_advice_holds_no_secret_signature_or_body(case: Case) -> None:
    headers = case.headers()
    diagnosis = diagnose(case.body, headers, case.config, now=NOW)
    text = "\n".join(diagnosis.advice)
    secrets = [SECRET, PREVIOUS, STRANGER, *case.config.secrets]
    forbidden = [s.removeprefix("whsec_")[:12] for s in secrets]
    for name, value in headers.items():
        if "signature" in name:  # every signature in it, whatever the separator
            forbidden += [part for part in value.replace(" ", ",").replace("=", ",").split(",") if len(part) > 8]
    forbidden += ["ACME-123", "café", "p-1"]
    assert not [f for f in forbidden if f in text], text


def test_a_header_name_is_matched_whatever_its_case() -> None:
    headers = {name.title(): value for name, value in outpost().items()}
    assert diagnose(BODY, headers, receiver(), now=NOW).code == "ok"


def test_a_skewed_request_signed_by_a_stranger_says_both() -> None:
    diagnosis = diagnose(BODY, outpost([STRANGER], timestamp=NOW + 900), receiver(), now=NOW)
    assert diagnosis.codes == ["timestamp_outside_tolerance", "wrong_secret"]
    assert any("900 seconds in the future" in line for line in diagnosis.advice)


def test_a_custom_template_reads_the_timestamp_where_the_template_puts_it() -> None:
    templates = {"signature_content_template": "{{.Timestamp.Unix}}.{{.EventID}}.{{.Body}}",
                 "signature_header_template": 'ts={{.Timestamp.Unix}};sig={{.Signatures | join ","}}'}
    diagnosis = diagnose(BODY, outpost(timestamp=NOW - 600, **templates), receiver(**templates), now=NOW)
    assert diagnosis.code == "timestamp_outside_tolerance"
    assert any("signed 600 seconds ago" in line for line in diagnosis.advice)


@pytest.mark.parametrize("body", [b"[" * 50_000 + b"]" * 50_000, b'{"a":"\\ud800"}', b"\xff\xfe not json"],
                         ids=["nested-too-deep", "lone-surrogate", "not-json"])
def test_a_hostile_body_is_diagnosed_without_raising(body: bytes) -> None:
    headers = receiver([STRANGER]).verifier().sign(body, event_id=EVENT_ID, topic=TOPIC, timestamp=NOW,
                                                   timestamped=True)
    assert diagnose(body, headers, receiver(), now=NOW).code == "wrong_secret"
