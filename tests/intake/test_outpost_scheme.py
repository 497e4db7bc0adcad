"""Outpost's configurable signing (``DESTINATIONS_WEBHOOK_*``), table-tested as Outpost's destwebhook tests it.

The expected values are Outpost's own (its HMAC test vectors: key ``test-secret``,
content ``1234567890.{"hello":"world"}``) or computed here with ``hmac``
directly from each case's documented content and header shape, never with the
scheme under test, so a bug shared by signer and verifier shows up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from fulfiller.config import ConfigError, parse_config
from fulfiller.intake.outpost import Codec, HeaderNames, OutpostScheme
from fulfiller.intake.refusal import Refusal, SignatureError

# Outpost's signature_test.go: TestHmacAlgorithms.
KEY = "test-secret"
T = 1234567890
HELLO = b'{"hello":"world"}'
OUTPOST_VECTORS = {
    "hmac-sha256": "7054f74dae9f73e82b56ca73e8f81450097c698eeda0b00bb8728e89796baf2d",
    "hmac-sha1": "e2f4423c54f5385099d8e3fbb01237d415ee8fdf",
    "hmac-md5": "aa98470ad83d2d02006b1a67d2c3b4eb",
}
TIMESTAMPED = ("{{.Timestamp.Unix}}.{{.Body}}", 't={{.Timestamp.Unix}},v0={{.Signatures | join ","}}')

CUR, PREV, OTHER = "whsec_current-0123", "whsec_previous-4567", "whsec_someone-else"
BODY = b'{"code":"ACME-123","note":"caf\xc3\xa9"}\n'
EVENT_ID, TOPIC = "evt_2hX9q3Zk", "video.source_requested"
RFC3339 = "2009-02-13T23:31:30Z"  # T as Outpost's timestamp header writes it


def scheme(content: str = "{{.Body}}", header: str = 'v0={{.Signatures | join ","}}', *, algorithm: str = "hmac-sha256",
           encoding: str = "hex", prefix: str = "x-outpost-", **names: str | None) -> OutpostScheme:
    return OutpostScheme(HeaderNames.resolve(prefix, **names), Codec(algorithm, encoding), content_template=content,
                         header_template=header)


def keys(*secrets: str) -> list[bytes]:
    return [s.encode() for s in secrets]


@pytest.mark.parametrize("encoding", ["hex", "base64"])
@pytest.mark.parametrize("algorithm", list(OUTPOST_VECTORS))
def test_outposts_own_hmac_vectors(algorithm: str, encoding: str) -> None:
    digest = bytes.fromhex(OUTPOST_VECTORS[algorithm])
    expected = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    s = scheme(*TIMESTAMPED, algorithm=algorithm, encoding=encoding)
    header = {"x-outpost-signature": f"t={T},v0={expected}"}
    assert s.verify(HELLO, header, keys(KEY), 300, now=T) is None
    signed = s.sign(HELLO, keys(KEY), event_id="e", topic="t", timestamp=T)
    assert signed["x-outpost-signature"] == f"t={T},v0={expected}"
    with pytest.raises(SignatureError) as refused:
        s.verify(HELLO.replace(b"world", b"World"), header, keys(KEY), 300, now=T)
    assert refused.value.code == Refusal.BAD_SIGNATURE
    other = "hmac-md5" if algorithm != "hmac-md5" else "hmac-sha1"  # another algorithm's signature: wrong shape
    with pytest.raises(SignatureError) as wrong:
        scheme(*TIMESTAMPED, algorithm=other, encoding=encoding).verify(HELLO, header, keys(KEY), 300, now=T)
    assert wrong.value.code == Refusal.MALFORMED_SIGNATURE


def hx(secret: str, content: bytes) -> str:
    return hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Case:
    """A documented template pair: the content Outpost signs, the header value it builds from the signatures,
    and the other headers it sends."""

    content: str
    header: str
    signed: bytes
    value: Callable[[list[str]], str]
    headers: dict[str, str] = field(default_factory=dict)
    rotation_only: bool = False


def joined(prefix: str, sep: str = ",") -> Callable[[list[str]], str]:
    return lambda sigs: prefix + sep.join(sigs)


CASES = {
    "default": Case("{{.Body}}", 'v0={{.Signatures | join ","}}', BODY, joined("v0=")),
    "timestamped": Case(*TIMESTAMPED, f"{T}.".encode() + BODY, joined(f"t={T},v0=")),
    "custom-separators": Case("ts={{.Timestamp.Unix}};content={{.Body}}",
                              'timestamp={{.Timestamp.Unix}};signatures={{.Signatures | join ","}}',
                              f"ts={T};content=".encode() + BODY, joined(f"timestamp={T};signatures=")),
    "event-data": Case("ts={{.Timestamp.Unix}};id={{.EventID}};topic={{.Topic}};data={{.Body}}",
                       't={{.Timestamp.Unix}},id={{.EventID}},topic={{.Topic}},v0={{.Signatures | join ","}}',
                       f"ts={T};id={EVENT_ID};topic={TOPIC};data=".encode() + BODY,
                       joined(f"t={T},id={EVENT_ID},topic={TOPIC},v0=")),
    "event-id-from-its-header": Case("{{.EventID}}.{{.Body}}", 'v0={{.Signatures | join ","}}',
                                     f"{EVENT_ID}.".encode() + BODY, joined("v0="),
                                     {"x-outpost-event-id": EVENT_ID}),
    "unix-milli": Case("{{.Timestamp.UnixMilli}}.{{.Body}}", 't={{.Timestamp.UnixMilli}},v0={{.Signatures | join ","}}',
                       f"{T}000.".encode() + BODY, joined(f"t={T}000,v0=")),
    "rfc3339-from-timestamp-header": Case('v1:{{.Timestamp.Format "2006-01-02T15:04:05Z07:00"}}:{{.Body}}',
                                          'v1={{.Signatures | join " v1="}}', f"v1:{RFC3339}:".encode() + BODY,
                                          joined("v1=", " v1="), {"x-outpost-timestamp": RFC3339}),
    "unix-from-timestamp-header": Case("{{.Timestamp.Unix}}.{{.Body}}", '{{.Signatures | join ","}}',
                                       f"{T}.".encode() + BODY, joined(""), {"x-outpost-timestamp": RFC3339}),
    "indexed": Case("{{.Body}}", "v0={{index .Signatures 0}},v0={{index .Signatures 1}}", BODY,
                    lambda sigs: f"v0={sigs[0]},v0={sigs[1]}", rotation_only=True),
}


def request(case: Case, secrets: list[str], body: bytes = BODY) -> tuple[bytes, dict[str, str]]:
    sigs = [hx(s, case.signed) for s in secrets]
    return body, {"x-outpost-signature": case.value(sigs), "x-outpost-event-id": EVENT_ID,
                  "x-outpost-topic": TOPIC, **case.headers}


@pytest.mark.parametrize(("name", "rotation"), [
    pytest.param(name, rotation, id=f"{name}-{'rotation' if rotation else 'one-signature'}")
    for name, case in CASES.items() for rotation in (False, True) if rotation or not case.rotation_only])
def test_documented_templates(name: str, rotation: bool) -> None:
    case = CASES[name]
    sent = [CUR, PREV] if rotation else [CUR]
    s = scheme(case.content, case.header)
    body, headers = request(case, sent)
    for held in ([CUR], [PREV, CUR], [OTHER, sent[-1]]):  # the current secret, both, the previous one alone
        assert s.verify(body, headers, keys(*held), 300, now=T) == EVENT_ID
    # What send-test-event sends verifies, and is what Outpost sends.
    signed = s.sign(body, keys(*sent), event_id=EVENT_ID, topic=TOPIC, timestamp=T)
    assert signed["x-outpost-signature"] == headers["x-outpost-signature"]
    refusals = {
        "wrong secret": (body, headers, [OTHER], Refusal.BAD_SIGNATURE),
        "tampered body": (body + b" ", headers, [CUR], Refusal.BAD_SIGNATURE),
        "no header": (body, {k: v for k, v in headers.items() if k != "x-outpost-signature"}, [CUR],
                      Refusal.NO_SIGNATURE_HEADER),
        "garbled": (body, {**headers, "x-outpost-signature": "nonsense"}, [CUR], Refusal.MALFORMED_SIGNATURE),
    }
    for what, (b, h, held, code) in refusals.items():
        with pytest.raises(SignatureError) as refused:
            s.verify(b, h, keys(*held), 300, now=T)
        assert refused.value.code == code, what


@pytest.mark.parametrize("name", ["timestamped", "unix-milli", "rfc3339-from-timestamp-header"])
def test_a_signed_timestamp_is_held_to_the_tolerance_and_0_checks_none(name: str) -> None:
    case = CASES[name]
    body, headers = request(case, [CUR])
    s = scheme(case.content, case.header)
    assert s.verify(body, headers, keys(CUR), 300, now=T + 300) == EVENT_ID
    with pytest.raises(SignatureError) as late:
        s.verify(body, headers, keys(CUR), 300, now=T + 301)
    assert late.value.code == Refusal.TIMESTAMP_OUTSIDE_TOLERANCE
    assert s.verify(body, headers, keys(CUR), 0, now=T + 86_400) == EVENT_ID


def test_a_timestamp_the_content_signs_must_arrive() -> None:
    case = CASES["rfc3339-from-timestamp-header"]
    body, headers = request(case, [CUR])
    del headers["x-outpost-timestamp"]
    with pytest.raises(SignatureError) as refused:
        scheme(case.content, case.header).verify(body, headers, keys(CUR), 300, now=T)
    assert refused.value.code == Refusal.MISSING_TIMESTAMP


def test_header_names_are_pinned_and_a_prefix_is_used_as_is() -> None:
    s = scheme("{{.EventID}}.{{.Body}}", prefix="x-acme", signature="X-Signed", event_id="X-Id")
    assert s.names == HeaderNames("x-id", "x-acmetopic", "x-acmetimestamp", "x-signed")
    headers = {"x-signed": "v0=" + hx(CUR, f"{EVENT_ID}.".encode() + BODY), "x-id": EVENT_ID}
    assert s.verify(BODY, headers, keys(CUR), 300, now=T) == EVENT_ID


@pytest.mark.parametrize(("receiver", "key", "message"), [
    ({"signature_content_template": "{{.Foo}}.{{.Body}}"}, "signature_content_template",
     'unsupported template part "{{.Foo}}"'),
    ({"signature_content_template": '{{.Body | printf "%s"}}'}, "signature_content_template",
     'unsupported template part "{{.Body | printf "%s"}}"'),
    ({"signature_content_template": '{{.Timestamp.Format "2006-01-02"}}.{{.Body}}'}, "signature_content_template",
     'unsupported template part "{{.Timestamp.Format "2006-01-02"}}"'),
    ({"signature_content_template": '{{.Signatures | join ","}}{{.Body}}'}, "signature_content_template",
     'unsupported template part "{{.Signatures | join ","}}"'),
    ({"signature_content_template": "{{- .Body}}"}, "signature_content_template",
     'unsupported template part "{{- .Body}}"'),
    ({"signature_content_template": "{{.Body}"}, "signature_content_template", 'unsupported template part "{{.Body}"'),
    ({"signature_content_template": "{{.EventID}}"}, "signature_content_template", "signs no {{.Body}}"),
    ({"signature_header_template": "v0={{.Body}}"}, "signature_header_template",
     'unsupported template part "{{.Body}}"'),
    ({"signature_header_template": "v0={{.Signatures}}"}, "signature_header_template",
     'unsupported template part "{{.Signatures}}"'),
    ({"signature_header_template": "t={{.Timestamp.Unix}}"}, "signature_header_template", "places no signature"),
    ({"signature_content_template": "{{.EventID}}.{{.Body}}", "event_id_header": ""}, "signature_content_template",
     "signs {{.EventID}}, which no header carries"),
    ({"signature_content_template": "{{.Timestamp.Unix}}.{{.Body}}", "timestamp_header": ""},
     "signature_content_template", "signs a {{.Timestamp}}, which no header carries"),
    ({"signature_header": ""}, "signature_header", "must not be empty"),
    ({"signature_content_template": "{{.Topic}}.{{.Body}}", "require_timestamp": True}, "require_timestamp",
     "signs no timestamp"),
    ({"signature_algorithm": "hmac-sha512"}, "signature_algorithm", "hmac-sha256"),
    ({"signature_encoding": "base32"}, "signature_encoding", "hex"),
    ({"mode": "standard", "signature_encoding": "base64"}, "signature_encoding", "applies to mode: outpost"),
])
def test_what_cannot_be_verified_is_a_config_error_naming_the_key_and_part(receiver: dict, key: str,
                                                                            message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config_text(receiver), env={})
    [(path, text)] = info.value.errors
    assert path == f"receiver.{key}"
    assert message in text


def config_text(receiver: dict) -> str:
    return json.dumps({"receiver": {"secrets": ["s"], **receiver}, "catalogs": {"local": {"type": "local"}},
                       "routes": [{"catalog": "local"}]})


def test_the_config_builds_the_verifier_the_receiver_uses() -> None:
    config = parse_config(config_text({
        "signature_algorithm": "hmac-sha1", "signature_encoding": "base64", "timestamp_tolerance_s": 0,
        "signature_content_template": TIMESTAMPED[0], "signature_header_template": TIMESTAMPED[1]}), env={})
    digest = base64.b64encode(bytes.fromhex(OUTPOST_VECTORS["hmac-sha1"])).decode()
    verifier = parse_config(config_text({}), env={}).receiver.verifier()
    assert verifier.describe() == ["x-outpost-signature: v0=<hex>[,<hex>] or t=<unix>,v0=<hex>[,<hex>]"]
    verifier = config.receiver.model_copy(update={"secrets": [KEY]}).verifier()
    assert verifier.verify(HELLO, {"x-outpost-signature": f"t={T},v0={digest}"}) is None  # tolerance 0: no check
    assert verifier.describe() == ["x-outpost-signature: t=<unix>,v0=<base64>[,<base64>]"]
