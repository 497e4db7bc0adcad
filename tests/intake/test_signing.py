"""Signature verification, table-tested against requests signed the way the senders sign.

Expected Outpost signatures are computed here with ``hmac`` directly (not with
``sign_outpost``), and Standard Webhooks requests come from the reference
``standardwebhooks`` package, so a bug shared by signer and verifier shows up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.datastructures import Headers

from fulfiller.intake.signing import (
    Refusal,
    SignatureError,
    Verifier,
    sign_outpost,
    sign_standard,
)


def verify_outpost(body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, prefix: str = "x-outpost-",
                   tolerance_s: int = 300, now: float | None = None, require_timestamp: bool = False) -> None:
    """The receiver's check in Outpost mode, as ``Verifier`` makes it from the config's keys."""
    Verifier("outpost", secrets, prefix, tolerance_s, require_timestamp).verify(body, headers, now)


def verify_standard(body: bytes, headers: Mapping[str, str], secrets: Sequence[str], *, prefix: str = "webhook-",
                    tolerance_s: int = 300, now: float | None = None) -> str | None:
    """The receiver's check in Standard Webhooks mode: the message id."""
    return Verifier("standard", secrets, prefix, tolerance_s).verify(body, headers, now)

NOW = 1_717_249_416  # Outpost's documented example timestamp
BODY = b'{"code":"ACME-123","variation":1,"locale":"fr-FR","note":"caf\xc3\xa9"}\n'
TAMPERED = BODY.replace(b"ACME-123", b"ACME-124")

# Outpost default-mode secrets: used whole as the HMAC key, prefix included.
CUR = "whsec_current-0123456789abcdef"
PREV = "whsec_previous-fedcba9876543210"
OTHER = "whsec_someone-else"
# A whsec_ secret whose tail is valid base64, to prove it is NOT decoded.
B64ISH = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def hx(secret: str | bytes, content: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, content, hashlib.sha256).hexdigest()


def ts_content(t: int, body: bytes = BODY) -> bytes:
    return f"{t}.".encode() + body


def sig(value: str, prefix: str = "x-outpost-") -> dict[str, str]:
    return {f"{prefix}signature": value}


H_CUR, H_PREV, H_OTHER = hx(CUR, BODY), hx(PREV, BODY), hx(OTHER, BODY)
OK = None

# (body received, headers, secrets held, extra kwargs, expected SignatureError reason or OK)
OUTPOST_CASES = [
    # --- valid ---
    pytest.param(BODY, sig(f"v0={H_CUR}"), [CUR], {}, OK, id="single-secret"),
    pytest.param(BODY, sig(f"v0={H_CUR},{H_PREV}"), [CUR], {}, OK, id="rotation-two-sigs-hold-current"),
    pytest.param(BODY, sig(f"v0={H_CUR},{H_PREV}"), [PREV], {}, OK, id="rotation-two-sigs-hold-previous"),
    pytest.param(BODY, sig(f"v0={H_CUR},{H_PREV}"), [CUR, PREV], {}, OK, id="rotation-two-sigs-two-secrets"),
    pytest.param(BODY, sig(f"v0={H_CUR},{H_PREV}"), [PREV, CUR], {}, OK, id="rotation-two-sigs-secrets-reversed"),
    pytest.param(BODY, sig(f"v0={H_PREV},{H_CUR}"), [CUR], {}, OK, id="rotation-sigs-reversed"),
    pytest.param(BODY, sig(f"v0={H_PREV},{H_CUR}"), [PREV, CUR], {}, OK, id="rotation-both-reversed"),
    pytest.param(BODY, sig(f"v0={H_CUR}"), [PREV, CUR], {}, OK, id="one-sig-second-secret-matches"),
    pytest.param(BODY, sig(f"v0={H_CUR}", "x-acme-"), [CUR], {"prefix": "x-acme-"}, OK, id="custom-prefix"),
    pytest.param(BODY, sig(f"v0={H_CUR.upper()}"), [CUR], {}, OK, id="uppercase-hex"),
    pytest.param(BODY, sig(f"  v0 = {H_CUR} ,  {H_PREV}  "), [PREV], {}, OK, id="extra-spaces"),
    pytest.param(BODY, sig(f"V0={H_CUR}"), [CUR], {}, OK, id="uppercase-key"),
    pytest.param(BODY, sig(f"v0={hx(B64ISH, BODY)}"), [B64ISH], {}, OK, id="whsec-secret-used-whole"),
    # timestamped template: t=<unix>,v0=... over "<t>.<body>"
    pytest.param(BODY, sig(f"t={NOW},v0={hx(CUR, ts_content(NOW))}"), [CUR], {}, OK, id="ts-now"),
    pytest.param(BODY, sig(f"t={NOW - 299},v0={hx(CUR, ts_content(NOW - 299))}"), [CUR], {}, OK, id="ts-299s-old"),
    pytest.param(BODY, sig(f"t={NOW - 300},v0={hx(CUR, ts_content(NOW - 300))}"), [CUR], {}, OK, id="ts-at-tolerance"),
    pytest.param(BODY, sig(f"t={NOW + 120},v0={hx(CUR, ts_content(NOW + 120))}"), [CUR], {}, OK, id="ts-120s-ahead"),
    pytest.param(
        BODY,
        sig(f"t={NOW},v0={hx(CUR, ts_content(NOW))},{hx(PREV, ts_content(NOW))}"),
        [PREV],
        {},
        OK,
        id="ts-rotation",
    ),
    pytest.param(
        BODY,
        sig(f" t = {NOW} , v0 = {hx(CUR, ts_content(NOW)).upper()} "),
        [CUR],
        {},
        OK,
        id="ts-spaces-uppercase",
    ),
    pytest.param(
        BODY, sig(f"t={NOW - 50},v0={hx(CUR, ts_content(NOW - 50))}"), [CUR], {"tolerance_s": 60}, OK,
        id="ts-custom-tolerance-inside",
    ),
    # --- refused ---
    pytest.param(BODY, sig(f"v0={H_OTHER}"), [CUR], {}, "no signature matches", id="wrong-secret"),
    pytest.param(BODY, sig(f"v0={H_CUR},{H_PREV}"), [OTHER], {}, "no signature matches", id="rotation-wrong-secret"),
    pytest.param(TAMPERED, sig(f"v0={H_CUR}"), [CUR], {}, "no signature matches", id="tampered-body"),
    pytest.param(
        BODY,
        sig("v0=" + hx(base64.b64decode(B64ISH[6:] + "=="), BODY)),
        [B64ISH],
        {},
        "no signature matches",
        id="whsec-secret-not-base64-decoded",
    ),
    pytest.param(
        BODY, sig(f"t={NOW},v0={H_CUR}"), [CUR], {}, "no signature matches", id="ts-header-but-sig-over-body-only"
    ),
    pytest.param(
        BODY,
        sig(f"t={NOW - 10},v0={hx(CUR, ts_content(NOW))}"),
        [CUR],
        {},
        "no signature matches",
        id="ts-altered",
    ),
    pytest.param(
        TAMPERED, sig(f"t={NOW},v0={hx(CUR, ts_content(NOW))}"), [CUR], {}, "no signature matches", id="ts-tampered"
    ),
    pytest.param(
        BODY,
        sig(f"t={NOW - 301},v0={hx(CUR, ts_content(NOW - 301))}"),
        [CUR],
        {},
        "timestamp outside tolerance",
        id="ts-too-old",
    ),
    pytest.param(
        BODY,
        sig(f"t={NOW + 301},v0={hx(CUR, ts_content(NOW + 301))}"),
        [CUR],
        {},
        "timestamp outside tolerance",
        id="ts-too-far-ahead",
    ),
    pytest.param(
        BODY,
        sig(f"t={NOW - 86_400},v0={hx(CUR, ts_content(NOW - 86_400))}"),
        [CUR],
        {},
        "timestamp outside tolerance",
        id="ts-replayed-next-day",
    ),
    pytest.param(
        BODY,
        sig(f"t={NOW - 61},v0={hx(CUR, ts_content(NOW - 61))}"),
        [CUR],
        {"tolerance_s": 60},
        "timestamp outside tolerance",
        id="ts-custom-tolerance-outside",
    ),
    pytest.param(BODY, {}, [CUR], {}, "missing signature header", id="missing-header"),
    pytest.param(
        BODY, sig(f"v0={H_CUR}"), [CUR], {"prefix": "x-acme-"}, "missing signature header",
        id="custom-prefix-default-header-sent",
    ),
    pytest.param(BODY, sig(""), [CUR], {}, "empty signature header", id="empty-header"),
    pytest.param(BODY, sig("   "), [CUR], {}, "empty signature header", id="blank-header"),
    pytest.param(BODY, sig(H_CUR), [CUR], {}, "malformed signature header", id="no-v0"),
    pytest.param(BODY, sig("garbage"), [CUR], {}, "malformed signature header", id="garbage"),
    pytest.param(BODY, sig("v0="), [CUR], {}, "malformed signature header", id="v0-empty"),
    pytest.param(BODY, sig(f"v1={H_CUR}"), [CUR], {}, "malformed signature header", id="wrong-version"),
    pytest.param(BODY, sig(f"sha256={H_CUR}"), [CUR], {}, "malformed signature header", id="github-style"),
    pytest.param(BODY, sig("v0=" + "g" * 64), [CUR], {}, "malformed signature header", id="non-hex"),
    pytest.param(BODY, sig(f"v0={H_CUR[:-1]}"), [CUR], {}, "malformed signature header", id="truncated-sig"),
    pytest.param(BODY, sig(f"v0={H_CUR}0"), [CUR], {}, "malformed signature header", id="overlong-sig"),
    pytest.param(
        BODY, sig(f"v0={H_CUR},{H_PREV[:10]}"), [CUR], {}, "malformed signature header", id="one-candidate-malformed"
    ),
    pytest.param(BODY, sig(f"v0={H_CUR},"), [CUR], {}, "malformed signature header", id="trailing-comma"),
    pytest.param(
        BODY,
        sig(base64.b64encode(bytes.fromhex(H_CUR)).decode()),
        [CUR],
        {},
        "malformed signature header",
        id="base64-instead-of-hex",
    ),
    pytest.param(BODY, sig(f"t=abc,v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-not-integer"),
    pytest.param(BODY, sig(f"t=,v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-empty"),
    pytest.param(BODY, sig(f"t=1.5,v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-float"),
    pytest.param(BODY, sig(f"t=-5,v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-negative"),
    pytest.param(BODY, sig(f"t=1_717_249_416,v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-underscores"),
    pytest.param(BODY, sig(f"t={'9' * 5000},v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-huge"),
    pytest.param(BODY, sig(f"t={NOW}"), [CUR], {}, "malformed signature header", id="t-without-v0"),
    pytest.param(BODY, sig(f"t={NOW},t={NOW},v0={H_CUR}"), [CUR], {}, "malformed signature header", id="t-twice"),
]


# The public reason code the receiver answers for each refusal's message (SPEC, "The signature doctor").
CODES = {
    "missing signature header": Refusal.NO_SIGNATURE_HEADER,
    "empty signature header": Refusal.NO_SIGNATURE_HEADER,
    "malformed signature header": Refusal.MALFORMED_SIGNATURE,
    "missing id header": Refusal.MALFORMED_SIGNATURE,
    "timestamp outside tolerance": Refusal.TIMESTAMP_OUTSIDE_TOLERANCE,
    "missing timestamp": Refusal.MISSING_TIMESTAMP,
    "missing timestamp header": Refusal.MISSING_TIMESTAMP,
    "no signature matches": Refusal.BAD_SIGNATURE,
}


def test_the_reason_codes_are_the_public_ones() -> None:
    assert set(Refusal) == {"no_signature_header", "malformed_signature", "timestamp_outside_tolerance",
                            "missing_timestamp", "bad_signature"}


def _assert_safe(message: str, *secrets: str) -> None:
    """A refusal reason must be loggable: no secret, no digest."""
    for s in secrets:
        assert s not in message
    assert not re.search(r"[0-9a-fA-F]{32}", message)


@pytest.mark.parametrize(("body", "headers", "secrets", "kwargs", "error"), OUTPOST_CASES)
def test_verify_outpost(body, headers, secrets, kwargs, error):
    if error is None:
        assert verify_outpost(body, headers, secrets, now=NOW, **kwargs) is None
        return
    with pytest.raises(SignatureError) as exc:
        verify_outpost(body, headers, secrets, now=NOW, **kwargs)
    assert str(exc.value) == error
    assert exc.value.code == CODES[error]
    _assert_safe(str(exc.value), *secrets, CUR, PREV)


# --- Standard Webhooks, signed by the reference implementation -----------------------

SW_CUR = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_PREV = "whsec_" + base64.b64encode(bytes(range(32))).decode()
SW_OTHER = "whsec_" + base64.b64encode(b"not the right key at all!").decode()
MSG_ID = "evt_2hX9q3Zk"


def ref_sig(secret: str, t: int = NOW, msg_id: str = MSG_ID, body: bytes = BODY) -> str:
    """One ``v1,<b64>`` entry as the ``standardwebhooks`` package signs it."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(t, tz=timezone.utc), body.decode())


def std(signature: str | None, t: int | str | None = NOW, msg_id: str | None = MSG_ID, prefix: str = "webhook-"):
    h = {}
    if msg_id is not None:
        h[f"{prefix}id"] = msg_id
    if t is not None:
        h[f"{prefix}timestamp"] = str(t)
    if signature is not None:
        h[f"{prefix}signature"] = signature
    return h


STANDARD_CASES = [
    pytest.param(BODY, std(ref_sig(SW_CUR)), [SW_CUR], {}, OK, id="valid"),
    pytest.param(BODY, std(ref_sig(SW_CUR)), [SW_CUR[6:]], {}, OK, id="secret-without-whsec-prefix"),
    pytest.param(BODY, std(f"{ref_sig(SW_CUR)} {ref_sig(SW_PREV)}"), [SW_CUR], {}, OK, id="rotation-hold-current"),
    pytest.param(BODY, std(f"{ref_sig(SW_CUR)} {ref_sig(SW_PREV)}"), [SW_PREV], {}, OK, id="rotation-hold-previous"),
    pytest.param(
        BODY, std(f"{ref_sig(SW_CUR)} {ref_sig(SW_PREV)}"), [SW_PREV, SW_CUR], {}, OK, id="rotation-two-secrets"
    ),
    pytest.param(BODY, std(f"{ref_sig(SW_PREV)} {ref_sig(SW_CUR)}"), [SW_CUR], {}, OK, id="rotation-sigs-reversed"),
    pytest.param(BODY, std(ref_sig(SW_CUR)), [SW_OTHER, SW_CUR], {}, OK, id="second-secret-matches"),
    pytest.param(
        BODY, std(f"v1a,{base64.b64encode(b'x' * 64).decode()} {ref_sig(SW_CUR)}"), [SW_CUR], {}, OK,
        id="other-version-ignored",
    ),
    pytest.param(BODY, std(f"  {ref_sig(SW_CUR)}  "), [SW_CUR], {}, OK, id="extra-spaces"),
    pytest.param(BODY, std(ref_sig(SW_CUR, NOW - 300), t=NOW - 300), [SW_CUR], {}, OK, id="at-tolerance"),
    pytest.param(
        BODY, std(ref_sig(SW_CUR), prefix="x-acme-"), [SW_CUR], {"prefix": "x-acme-"}, OK, id="custom-prefix"
    ),
    # --- refused ---
    pytest.param(BODY, std(ref_sig(SW_CUR)), [SW_OTHER], {}, "no signature matches", id="wrong-secret"),
    pytest.param(
        BODY, std(f"{ref_sig(SW_CUR)} {ref_sig(SW_PREV)}"), [SW_OTHER], {}, "no signature matches",
        id="rotation-wrong-secret",
    ),
    pytest.param(TAMPERED, std(ref_sig(SW_CUR)), [SW_CUR], {}, "no signature matches", id="tampered-body"),
    pytest.param(BODY, std(ref_sig(SW_CUR), msg_id="evt_other"), [SW_CUR], {}, "no signature matches", id="id-swapped"),
    pytest.param(
        BODY, std(ref_sig(SW_CUR), t=NOW - 1), [SW_CUR], {}, "no signature matches", id="timestamp-altered"
    ),
    pytest.param(
        BODY, std(f"v1a,{base64.b64encode(b'x' * 64).decode()}"), [SW_CUR], {}, "no signature matches",
        id="only-other-versions",
    ),
    pytest.param(
        BODY, std(ref_sig(SW_CUR, NOW - 301), t=NOW - 301), [SW_CUR], {}, "timestamp outside tolerance", id="too-old"
    ),
    pytest.param(
        BODY, std(ref_sig(SW_CUR, NOW + 301), t=NOW + 301), [SW_CUR], {}, "timestamp outside tolerance",
        id="too-far-ahead",
    ),
    pytest.param(BODY, std(None), [SW_CUR], {}, "missing signature header", id="missing-signature"),
    pytest.param(BODY, std(""), [SW_CUR], {}, "empty signature header", id="empty-signature"),
    pytest.param(BODY, std(ref_sig(SW_CUR), msg_id=None), [SW_CUR], {}, "missing id header", id="missing-id"),
    pytest.param(BODY, std(ref_sig(SW_CUR), t=None), [SW_CUR], {}, "missing timestamp header", id="missing-timestamp"),
    pytest.param(BODY, {}, [SW_CUR], {}, "missing signature header", id="no-headers"),
    pytest.param(
        BODY, std(ref_sig(SW_CUR)), [SW_CUR], {"prefix": "x-acme-"}, "missing signature header",
        id="custom-prefix-default-headers-sent",
    ),
    pytest.param(BODY, std(ref_sig(SW_CUR), t="abc"), [SW_CUR], {}, "malformed signature header", id="timestamp-abc"),
    pytest.param(BODY, std("v1,!!!notbase64"), [SW_CUR], {}, "malformed signature header", id="sig-not-base64"),
    pytest.param(BODY, std(ref_sig(SW_CUR)[:-8]), [SW_CUR], {}, "malformed signature header", id="sig-truncated"),
    pytest.param(BODY, std("garbage"), [SW_CUR], {}, "malformed signature header", id="sig-no-version"),
    pytest.param(
        BODY, std(f"v0={hx(SW_CUR, BODY)}"), [SW_CUR], {}, "malformed signature header", id="outpost-form-sent"
    ),
]


@pytest.mark.parametrize(("body", "headers", "secrets", "kwargs", "error"), STANDARD_CASES)
def test_verify_standard(body, headers, secrets, kwargs, error):
    if error is None:
        assert verify_standard(body, headers, secrets, now=NOW, **kwargs) == MSG_ID
        return
    with pytest.raises(SignatureError) as exc:
        verify_standard(body, headers, secrets, now=NOW, **kwargs)
    assert str(exc.value) == error
    assert exc.value.code == CODES[error]
    _assert_safe(str(exc.value), *secrets, SW_CUR, SW_PREV)


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", "whsec_===="], ids=["not-b64", "empty", "pad-only"])
def test_standard_bad_secret_is_config_error(secret):
    with pytest.raises(ValueError):
        verify_standard(BODY, std(ref_sig(SW_CUR)), [secret], now=NOW)
    with pytest.raises(ValueError):
        Verifier("standard", [secret], "webhook-", 300)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp", [None, NOW], ids=["plain", "timestamped"])
@pytest.mark.parametrize("secrets", [[CUR], [CUR, PREV]], ids=["one-secret", "rotation"])
def test_sign_outpost_round_trip(secrets, timestamp):
    value = sign_outpost(BODY, secrets, timestamp=timestamp)
    content = BODY if timestamp is None else ts_content(timestamp)
    expected = "v0=" + ",".join(hx(s, content) for s in secrets)
    assert value == (expected if timestamp is None else f"t={timestamp},{expected}")
    for held in ([secrets[-1]], list(reversed(secrets))):
        verify_outpost(BODY, sig(value), held, now=NOW)
    with pytest.raises(SignatureError):
        verify_outpost(TAMPERED, sig(value), secrets, now=NOW)


@pytest.mark.parametrize("secrets", [[SW_CUR], [SW_CUR, SW_PREV]], ids=["one-secret", "rotation"])
def test_sign_standard_round_trip(secrets):
    headers = sign_standard(BODY, secrets, msg_id=MSG_ID, timestamp=NOW)
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": " ".join(ref_sig(s) for s in secrets),
    }
    assert verify_standard(BODY, headers, [secrets[-1]], now=NOW) == MSG_ID
    # ...and the reference implementation accepts ours (it checks against the real clock).
    t = int(time.time())
    live = sign_standard(BODY, secrets, msg_id=MSG_ID, timestamp=t)
    for s in secrets:
        Webhook(s).verify(BODY, live, json_parse=False)


# --- Verifier: what the receiver uses ----------------------------------------------------------


def test_verifier_outpost_returns_event_id():
    v = Verifier("outpost", [CUR, PREV], "x-outpost-", 300)
    headers = {"x-outpost-signature": f"v0={H_PREV}", "x-outpost-event-id": "evt_123"}
    assert v.verify(BODY, headers, now=NOW) == "evt_123"
    assert v.verify(BODY, {"x-outpost-signature": f"v0={H_CUR}"}, now=NOW) is None
    assert v.verify(BODY, {"x-outpost-signature": f"v0={H_CUR}", "x-outpost-event-id": ""}, now=NOW) is None
    with pytest.raises(SignatureError, match="no signature matches"):
        v.verify(TAMPERED, headers, now=NOW)


def test_verifier_outpost_custom_prefix_and_case_insensitive_headers():
    v = Verifier("outpost", [CUR], "X-Acme-", 300)
    headers = Headers({"X-Acme-Signature": f"t={NOW},v0={hx(CUR, ts_content(NOW))}", "X-Acme-Event-Id": "evt_9"})
    assert v.verify(BODY, headers, now=NOW) == "evt_9"
    with pytest.raises(SignatureError, match="timestamp outside tolerance"):
        v.verify(BODY, headers, now=NOW + 301)


def test_verifier_standard_returns_webhook_id():
    v = Verifier("standard", [SW_PREV, SW_CUR], "webhook-", 300)
    assert v.verify(BODY, std(ref_sig(SW_CUR)), now=NOW) == MSG_ID
    with pytest.raises(SignatureError, match="no signature matches"):
        v.verify(TAMPERED, std(ref_sig(SW_CUR)), now=NOW)
    custom = Verifier("standard", [SW_CUR], "x-acme-", 300)
    assert custom.verify(BODY, std(ref_sig(SW_CUR), prefix="x-acme-"), now=NOW) == MSG_ID


def test_verifier_requiring_a_timestamp_refuses_an_outpost_signature_without_t():
    strict = Verifier("outpost", [CUR], "x-outpost-", 300, require_timestamp=True)
    plain = sig(f"v0={hx(CUR, BODY)}")
    with pytest.raises(SignatureError, match="missing timestamp") as exc:
        strict.verify(BODY, plain, now=NOW)
    assert exc.value.code == Refusal.MISSING_TIMESTAMP
    assert strict.verify(BODY, sig(f"t={NOW},v0={hx(CUR, ts_content(NOW))}"), now=NOW) is None
    assert Verifier("outpost", [CUR], "x-outpost-", 300).verify(BODY, plain, now=NOW) is None  # the default
    with pytest.raises(SignatureError, match="missing timestamp"):
        verify_outpost(BODY, plain, [CUR], now=NOW, require_timestamp=True)


def test_verifier_requiring_a_timestamp_takes_standard_webhooks_which_always_carry_one():
    strict = Verifier("standard", [SW_CUR], "webhook-", 300, require_timestamp=True)
    assert strict.verify(BODY, std(ref_sig(SW_CUR)), now=NOW) == MSG_ID


def test_verifier_uses_real_clock_by_default():
    v = Verifier("outpost", [CUR], "x-outpost-", 300)
    t = int(time.time())
    assert v.verify(BODY, sig(f"t={t},v0={hx(CUR, ts_content(t))}")) is None
    with pytest.raises(SignatureError, match="timestamp outside tolerance"):
        v.verify(BODY, sig(f"t={NOW},v0={hx(CUR, ts_content(NOW))}"))


@pytest.mark.parametrize(
    ("mode", "secrets", "exc"),
    [
        ("svix", [CUR], ValueError),
        ("outpost", [], ValueError),
        ("outpost", [""], ValueError),
        ("standard", [], ValueError),
        ("outpost", CUR, TypeError),
    ],
    ids=["unknown-mode", "no-secrets", "empty-secret", "standard-no-secrets", "bare-string"],
)
def test_verifier_rejects_bad_config(mode, secrets, exc):
    with pytest.raises(exc):
        Verifier(mode, secrets, "x-outpost-", 300)


def test_verifier_repr_hides_secrets():
    r = repr(Verifier("outpost", [CUR, PREV], "x-outpost-", 300))
    assert CUR not in r and PREV not in r
