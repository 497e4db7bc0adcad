"""Credentials stay out of what people see: pre-signed URL signatures, waitpoint tokens, userinfo."""

from __future__ import annotations

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


def test_presigned_url_loses_its_whole_query_and_the_path_past_two_segments() -> None:
    out = redact_url(R2_URL)
    assert SIGNATURE not in out
    assert "AKIAEXAMPLE123" not in out
    assert out == ("https://acct123.r2.cloudflarestorage.com/media/fb-external/"
                   f"{REDACTED}/{REDACTED}/{REDACTED}/{REDACTED}/{REDACTED}?{REDACTED}")


@pytest.mark.parametrize(
    "param",
    ["X-Amz-Signature", "x-amz-signature", "X-Amz-Security-Token", "X-Amz-Credential", "Signature",
     "AWSAccessKeyId", "token", "sig", "access_token", "s3cr3t-value", "anything"],
)
def test_every_query_is_hidden_whatever_its_names(param: str) -> None:
    # A parameter's name may itself be the credential (?<token>), so nothing of the query is shown.
    out = redact_url(f"https://h.example/p?{param}=s3cr3t-value&keep=1")
    assert out == f"https://h.example/p?{REDACTED}"


def test_waitpoint_token_in_the_callback_path_is_redacted() -> None:
    out = redact_url(CALLBACK_URL)
    assert TOKEN not in out
    assert out == f"https://api.trigger.dev/api/v1/{REDACTED}/{REDACTED}/{REDACTED}/{REDACTED}"


@pytest.mark.parametrize("scheme", ["https", "HTTPS", "Https", "http", "hTTp"])
def test_a_callback_url_of_any_shape_keeps_only_two_segments_whatever_the_schemes_case(scheme: str) -> None:
    secret_hash = "9b74c9897bac770ffc029102a200c5de"
    out = redact_url(f"{scheme}://hooks.example.com/tokens/tok-id-7/callback/{secret_hash}")
    assert out == f"{scheme}://hooks.example.com/tokens/tok-id-7/{REDACTED}/{REDACTED}"
    assert secret_hash not in redact_text(f"callback {scheme}://hooks.example.com/tokens/tok-id-7/callback/{secret_hash}")


@pytest.mark.parametrize(("url", "shown"), [
    ("https://h.example", "https://h.example"),
    ("https://h.example/", "https://h.example/"),
    ("https://h.example/a/b", "https://h.example/a/b"),
    ("https://h.example/a/b/", "https://h.example/a/b/"),
    ("https://h.example/a/b/c/", f"https://h.example/a/b/{REDACTED}/"),
    ("https://h.example//a/s3cr3t", f"https://h.example//a/{REDACTED}"),  # an empty segment counts
    ("https://h.example/a/b?", "https://h.example/a/b"),
    ("https://h.example?s3cr3t", f"https://h.example?{REDACTED}"),
])
def test_the_path_past_two_segments_and_the_query(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_userinfo_is_dropped_and_the_port_kept() -> None:
    out = redact_url("https://user:p4ssw0rd@h.example:8443/path?x=1")
    assert "p4ssw0rd" not in out and "user" not in out
    assert out == f"https://h.example:8443/path?{REDACTED}"


def test_fragments_are_dropped() -> None:
    assert redact_url("https://h.example/p#access_token=s3cr3t") == "https://h.example/p"


def test_a_host_hidden_behind_a_backslash_is_shown_as_the_host_it_would_reach() -> None:
    # urllib3 (and a browser) end the host at the backslash: that is the host an operator needs to see.
    out = redact_url("https://attacker.example\\@acct.r2.cloudflarestorage.com/k/s3cr3t?X-Amz-Signature=s3cr3t")
    assert out == f"https://attacker.example\\@acct.r2.cloudflarestorage.com/k/{REDACTED}?{REDACTED}"


@pytest.mark.parametrize("url", ["https://h.example:99999/p/x/s3cr3t?X-Amz-Signature=s3cr3t",
                                 "https://[::1/p/x/s3cr3t?sig=s3cr3t", "https://h.example/\n/x/s3cr3t"])
def test_a_malformed_url_is_redacted_not_a_crash(url: str) -> None:
    # Admin pages and log lines render stored URLs: an error here would break them for this job.
    assert "s3cr3t" not in redact_url(url)


@pytest.mark.parametrize("url", ["mailto:x@y", "/relative/s3cr3t", "s3cr3t", ""])
def test_what_is_not_an_absolute_url_is_hidden_whole(url: str) -> None:
    assert redact_url(url) == REDACTED


def test_urls_inside_text_are_redacted() -> None:
    text = f"upload failed: ConnectError: cannot reach {R2_URL} (callback was {CALLBACK_URL})"
    out = redact_text(text)
    assert SIGNATURE not in out and TOKEN not in out
    assert out.startswith("upload failed: ConnectError: cannot reach https://acct123.r2.cloudflarestorage.com/media/")
    assert f"https://api.trigger.dev/api/v1/{REDACTED}/" in out


def test_urls_inside_text_are_redacted_whatever_the_schemes_case() -> None:
    out = redact_text(f"POST HTTPS://api.trigger.dev/api/v1/waitpoints/tokens/{TOKEN}/complete failed; "
                      f"PUT Https://acct123.r2.cloudflarestorage.com/k?X-Amz-Signature={SIGNATURE}")
    assert TOKEN not in out and SIGNATURE not in out


def test_text_without_urls_is_unchanged() -> None:
    assert redact_text("upload answered 503") == "upload answered 503"


def test_event_payload_shown_to_operators_is_redacted() -> None:
    payload = {"projectId": "p", "fulfillment": {"uploadUrl": R2_URL, "completeCallbackUrl": CALLBACK_URL,
                                                 "storageKey": "fb-external/p/k"}}
    shown = redact_payload(payload)
    assert SIGNATURE not in str(shown) and TOKEN not in str(shown)
    assert shown["fulfillment"]["storageKey"] == "fb-external/p/k"
    assert payload["fulfillment"]["uploadUrl"] == R2_URL  # the stored event itself is untouched


@pytest.mark.parametrize("scheme", ["https", "HTTPS"])
def test_a_callback_hash_is_hidden_in_the_payload_shown_to_operators(scheme: str) -> None:
    secret_hash = "c0ffee5ecret"
    url = f"{scheme}://hooks.example.com/tokens/tok_1/callback/{secret_hash}"
    shown = redact_payload({"fulfillment": {"uploadUrl": R2_URL, "completeCallbackUrl": url}})
    assert shown["fulfillment"]["completeCallbackUrl"] == f"{scheme}://hooks.example.com/tokens/tok_1/{REDACTED}/{REDACTED}"
