"""Reading a captured request back: curl -v, plain HTTP text, a portal's JSON copy, header lines."""

from __future__ import annotations

import json

import pytest

from fulfiller.intake.capture import CaptureError, parse_headers, parse_request

BODY = b'{"code":"ACME-123","note":"caf\xc3\xa9"}'
SIG = "v0=" + "ab" * 32


def test_plain_http_text_keeps_the_body_bytes_exactly_and_drops_an_editor_s_final_newline() -> None:
    raw = (b"POST /webhooks/outpost HTTP/1.1\r\nHost: fulfiller.example\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nX-Outpost-Signature: %s\r\n\r\n" % (len(BODY), SIG.encode()) + BODY + b"\n")
    captured = parse_request(raw)
    assert captured.body == BODY
    assert captured.headers["x-outpost-signature"] == SIG and captured.headers["host"] == "fulfiller.example"


def test_curl_verbose_output_gives_the_headers_and_the_body_from_the_lines_curl_does_not_mark() -> None:
    raw = "\n".join([
        "*   Trying 127.0.0.1:8080...",
        "* Connected to localhost (127.0.0.1) port 8080",
        "> POST /webhooks/outpost HTTP/1.1",
        "> Host: localhost:8080",
        f"> x-outpost-signature: {SIG}",
        "> Content-Type: application/json",
        f"> Content-Length: {len(BODY)}",
        ">",
        "} [41 bytes data]",
        "< HTTP/1.1 401 Unauthorized",
        "< content-type: application/json",
        "<",
        "* Connection #0 to host localhost left intact",
        BODY.decode(),
    ]).encode()
    captured = parse_request(raw)
    assert captured.headers["x-outpost-signature"] == SIG
    assert captured.body == BODY


def test_curl_output_without_the_body_asks_for_it_and_takes_it_from_a_file() -> None:
    raw = f"> POST /hook HTTP/2\n> x-outpost-signature: {SIG}\n> content-length: {len(BODY)}\n>\n< HTTP/2 401\n"
    with pytest.raises(CaptureError, match="--body FILE"):
        parse_request(raw.encode())
    assert parse_request(raw.encode(), BODY).body == BODY


def test_a_portal_s_json_copy_with_the_body_as_text_or_as_a_value() -> None:
    as_text = json.dumps({"headers": {"X-Outpost-Signature": SIG}, "body": BODY.decode()}).encode()
    assert parse_request(as_text).body == BODY and parse_request(as_text).note is None
    as_value = json.dumps({"headers": {"X-Outpost-Signature": SIG}, "body": json.loads(BODY)}).encode()
    captured = parse_request(as_value)
    assert captured.body == BODY and captured.headers == {"x-outpost-signature": SIG}
    assert captured.note and "re-serialised" in captured.note


def test_header_lines_skip_a_request_line_and_an_error_names_the_line_but_never_quotes_it() -> None:
    assert parse_headers(f"POST /hook HTTP/1.1\nX-Outpost-Signature: {SIG}\n\n") == {"x-outpost-signature": SIG}
    with pytest.raises(CaptureError) as caught:
        parse_headers(f"X-Outpost-Event-Id: evt_1\n{SIG}\n")
    assert "line 2" in str(caught.value) and SIG not in str(caught.value)
