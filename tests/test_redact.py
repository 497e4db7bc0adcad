"""Credentials stay out of what people see: pre-signed URL signatures, waitpoint tokens, userinfo."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from fulfiller.jobs import redact_payload
from fulfiller.redact import REDACTED, redact_text, redact_url

SIGNATURE = "5f2c8e0b9a7d4c3e1f6a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e"
R2_URL = (
    "https://acct123.r2.cloudflarestorage.com/media/fb-external/019d928c/HRT-1212/v2/en/9x16.video"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE123%2F20260424%2Fauto%2Fs3%2Faws4_request"
    f"&X-Amz-Date=20260424T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
)
TOKEN = "waitpoint_9f8e7d6c5b4a"
CALLBACK_URL = f"https://api.trigger.dev/api/v1/waitpoints/tokens/{TOKEN}/complete"


def test_presigned_url_loses_signature_and_credential_keeps_host_and_path() -> None:
    out = redact_url(R2_URL)
    assert SIGNATURE not in out
    assert "AKIAEXAMPLE123" not in out
    parts = urlsplit(out)
    assert parts.scheme == "https"
    assert parts.netloc == "acct123.r2.cloudflarestorage.com"
    assert parts.path == "/media/fb-external/019d928c/HRT-1212/v2/en/9x16.video"
    query = parse_qs(parts.query)
    assert query["X-Amz-Signature"] == [REDACTED]
    assert query["X-Amz-Credential"] == [REDACTED]
    # The harmless parameters stay: they tell an operator when the URL was made and for how long.
    assert query["X-Amz-Date"] == ["20260424T000000Z"]
    assert query["X-Amz-Expires"] == ["3600"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]


@pytest.mark.parametrize(
    "param",
    ["X-Amz-Signature", "x-amz-signature", "X-Amz-Security-Token", "X-Amz-Credential", "Signature",
     "AWSAccessKeyId", "token", "sig", "access_token"],
)
def test_every_credential_bearing_parameter_is_redacted(param: str) -> None:
    out = redact_url(f"https://h.example/p?{param}=s3cr3t-value&keep=1")
    assert "s3cr3t-value" not in out
    assert "keep=1" in out


def test_waitpoint_token_in_the_callback_path_is_redacted() -> None:
    out = redact_url(CALLBACK_URL)
    assert TOKEN not in out
    assert out == f"https://api.trigger.dev/api/v1/waitpoints/tokens/{REDACTED}/complete"


def test_any_segment_after_tokens_is_redacted_whatever_its_shape() -> None:
    out = redact_url("https://api.trigger.dev/api/v1/waitpoints/tokens/opaque-id-42/complete")
    assert "opaque-id-42" not in out
    assert out.endswith(f"/tokens/{REDACTED}/complete")


def test_userinfo_is_dropped_and_the_port_kept() -> None:
    out = redact_url("https://user:p4ssw0rd@h.example:8443/path?x=1")
    assert "p4ssw0rd" not in out and "user" not in out
    assert out == "https://h.example:8443/path?x=1"


def test_fragments_are_dropped() -> None:
    assert redact_url("https://h.example/p#access_token=s3cr3t") == "https://h.example/p"


@pytest.mark.parametrize("url", ["https://h.example:99999/p?X-Amz-Signature=s3cr3t", "https://[::1/p?sig=s3cr3t"])
def test_a_malformed_url_is_redacted_whole_not_a_crash(url: str) -> None:
    # Admin pages and log lines render stored URLs: a ValueError here would break them for this job.
    assert redact_url(url) == REDACTED


def test_urls_inside_text_are_redacted() -> None:
    text = f"upload failed: ConnectError: cannot reach {R2_URL} (callback was {CALLBACK_URL})"
    out = redact_text(text)
    assert SIGNATURE not in out and TOKEN not in out
    assert out.startswith("upload failed: ConnectError: cannot reach https://acct123.r2.cloudflarestorage.com/media/")
    assert "/tokens/REDACTED/complete" in out


def test_text_without_urls_is_unchanged() -> None:
    assert redact_text("upload answered 503") == "upload answered 503"


def test_event_payload_shown_to_operators_is_redacted() -> None:
    payload = {"projectId": "p", "fulfillment": {"uploadUrl": R2_URL, "completeCallbackUrl": CALLBACK_URL,
                                                 "storageKey": "fb-external/p/k"}}
    shown = redact_payload(payload)
    assert SIGNATURE not in str(shown) and TOKEN not in str(shown)
    assert shown["fulfillment"]["storageKey"] == "fb-external/p/k"
    assert payload["fulfillment"]["uploadUrl"] == R2_URL  # the stored event itself is untouched
