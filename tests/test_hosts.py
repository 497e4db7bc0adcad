"""Where bytes and callbacks may go: the URL policy, the sending libraries' reading, the allow-lists."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fulfiller import hosts
from fulfiller.delivery.callback import callback_target
from fulfiller.delivery.transfer import upload_target
from fulfiller.hosts import HostNotAllowed, Target, UnsafeUrl, check_url, parse_pattern, parse_target

R2 = ["*.r2.cloudflarestorage.com"]


def allowed(url: str, patterns: list[str], *, insecure: bool = False) -> bool:
    try:
        check_url(url, patterns, allow_insecure_http=insecure, what="upload")
    except (HostNotAllowed, UnsafeUrl):
        return False
    return True


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://acct.r2.cloudflarestorage.com/bucket/key?X-Amz-Signature=abc", True),
        ("https://a.b.r2.cloudflarestorage.com/k", True),  # * spans dots, as fnmatch does
        ("https://ACCT.R2.CloudflareStorage.com/k", True),  # host names are case blind
        ("https://acct.r2.cloudflarestorage.com:8443/k", True),  # a bare pattern allows any port
        ("https://r2.cloudflarestorage.com/k", False),  # "*." needs a label before it
        ("https://acct.r2.cloudflarestorage.com.evil.example/k", False),
        ("https://evil.example/acct.r2.cloudflarestorage.com", False),
        ("https://evil.example/?h=acct.r2.cloudflarestorage.com", False),
        ("https://acct.r2.cloudflarestorage.com@evil.example/k", False),  # userinfo is not the host
        ("https://evil-r2.cloudflarestorage.com/k", False),
    ],
)
def test_host_globs(url: str, ok: bool) -> None:
    assert allowed(url, R2) is ok


def test_exact_host() -> None:
    assert allowed("https://api.trigger.dev/api/v1/waitpoints/tokens/w/complete", ["api.trigger.dev"])
    assert not allowed("https://api.trigger.dev.evil.example/x", ["api.trigger.dev"])
    assert not allowed("https://trigger.dev/x", ["api.trigger.dev"])


def test_a_port_in_the_pattern_pins_it() -> None:
    patterns = ["127.0.0.1:9000"]
    assert allowed("http://127.0.0.1:9000/r2/key", patterns, insecure=True)
    assert not allowed("http://127.0.0.1:9001/r2/key", patterns, insecure=True)
    assert not allowed("http://127.0.0.1/r2/key", patterns, insecure=True)  # the default port, 80, is not 9000


def test_default_ports_count_when_pinned() -> None:
    assert allowed("https://api.trigger.dev/x", ["api.trigger.dev:443"])
    assert not allowed("https://api.trigger.dev:8443/x", ["api.trigger.dev:443"])
    assert allowed("http://127.0.0.1/x", ["127.0.0.1:80"], insecure=True)


def test_a_glob_with_a_pinned_port() -> None:
    patterns = ["*.r2.cloudflarestorage.com:443"]
    assert allowed("https://acct.r2.cloudflarestorage.com/k", patterns)
    assert not allowed("https://acct.r2.cloudflarestorage.com:444/k", patterns)


def test_any_pattern_in_the_list_will_do() -> None:
    patterns = ["127.0.0.1:9000", "*.r2.cloudflarestorage.com"]
    assert allowed("https://x.r2.cloudflarestorage.com/k", patterns)
    assert allowed("http://127.0.0.1:9000/k", patterns, insecure=True)
    assert not allowed("http://127.0.0.1:9002/k", patterns, insecure=True)
    assert not allowed("https://x.r2.cloudflarestorage.com/k", [])


def test_plain_http_is_refused_unless_allowed() -> None:
    with pytest.raises(HostNotAllowed, match="plain http"):
        check_url("http://acct.r2.cloudflarestorage.com/k", R2, allow_insecure_http=False, what="upload")
    check_url("http://acct.r2.cloudflarestorage.com/k", R2, allow_insecure_http=True, what="upload")


def test_allowing_http_does_not_bypass_the_allow_list() -> None:
    with pytest.raises(HostNotAllowed, match="not in the allow-list"):
        check_url("http://evil.example/k", R2, allow_insecure_http=True, what="upload")


@pytest.mark.parametrize(
    "url", ["ftp://acct.r2.cloudflarestorage.com/k", "file:///etc/passwd", "acct.r2.cloudflarestorage.com/k",
            "https:///k", "javascript:alert(1)"],
)
def test_other_schemes_and_hostless_urls_are_refused(url: str) -> None:
    assert not allowed(url, ["*"], insecure=True)


def test_the_error_names_what_and_where_but_not_the_query() -> None:
    with pytest.raises(HostNotAllowed) as caught:
        check_url("https://evil.example:8443/k?X-Amz-Signature=s3cr3t", R2, allow_insecure_http=False,
                  what="callback")
    assert str(caught.value) == "callback host evil.example:8443 is not in the allow-list"
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["https://acct.r2.cloudflarestorage.com:99999/k", "https://acct.r2.cloudflarestorage.com:abc/k",
            "https://[::1/k"],
)
def test_a_malformed_host_or_port_is_refused_not_a_crash(url: str) -> None:
    # Anything but UnsafeUrl here would crash the job (and retake it on every lease lapse) instead of ending it.
    with pytest.raises(UnsafeUrl, match="port|host|not a valid URL"):
        check_url(url, ["*"], allow_insecure_http=True, what="upload")


@pytest.mark.parametrize(("url", "pattern", "allowed"), [
    ("http://[::1]:8080/k", "::1", True),
    ("http://[::1]:8080/k", "[::1]:8080", True),
    ("http://[::1]:8081/k", "[::1]:8080", False),
    ("http://[::2]:8080/k", "::1", False),
])
def test_ipv6_patterns(url: str, pattern: str, allowed: bool) -> None:
    if allowed:
        check_url(url, [pattern], allow_insecure_http=True, what="upload")
    else:
        with pytest.raises(HostNotAllowed):
            check_url(url, [pattern], allow_insecure_http=True, what="upload")


def test_host_star_allows_any_port() -> None:
    assert allowed("https://api.trigger.dev:8443/x", ["api.trigger.dev:*"])
    assert allowed("http://[::1]:9/x", ["[::1]:*"], insecure=True)
    assert not allowed("https://api.trigger.dev.evil.example/x", ["api.trigger.dev:*"])


# --- the URL policy: one reading, or none ------------------------------------------------------------

ATTACKER_BEHIND_BACKSLASH = "https://attacker.example\\@acct.r2.cloudflarestorage.com/k?X-Amz-Signature=s"
FULL_WIDTH = "https://\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.r2.cloudflarestorage.com/k"


@pytest.mark.parametrize(("url", "reason"), [
    (ATTACKER_BEHIND_BACKSLASH, "holds a backslash at position 24"),
    ("https://acct.r2.cloudflarestorage.com\n.evil/k", r"holds whitespace ('\n') at position 37"),
    ("https://acct.r2.cloudflarestorage.com/k\r\nX-Injected: 1", r"holds whitespace ('\r')"),
    ("https://acct.r2.cloudflarestorage.com/k\x00", r"holds a control character ('\x00')"),
    ("https://acct.r2.cloudflarestorage.com/k\x7f", r"holds a control character ('\x7f')"),
    ("https://acct.r2.cloudflarestorage.com/k\x85", r"holds whitespace ('\x85')"),
    ("https://acct.r2.cloudflarestorage.com/k\u3000", r"holds whitespace ('\u3000')"),
    ("https://acct.r2.cloudflarestorage.com/k\ud800", r"holds a control character ('\ud800')"),
    (" https://acct.r2.cloudflarestorage.com/k", "holds whitespace (' ') at position 0"),
    (FULL_WIDTH, "has a host that is not plain ASCII"),
    ("https://acct.r2.cloudflarestorage.com\u3002evil.example/k", "has a host that is not plain ASCII"),
    ("https://user:pw@acct.r2.cloudflarestorage.com/k", "has userinfo"),
    ("https://@acct.r2.cloudflarestorage.com/k", "has userinfo"),
    ("https://%61cct.r2.cloudflarestorage.com/k", "malformed host"),
    ("https://acct.r2.cloudflarestorage.com:/k", "malformed host or port"),
    ("https://acct.r2.cloudflarestorage.com:0/k", "port out of range (0)"),
    ("https://acct.r2.cloudflarestorage.com:65536/k", "port out of range (65536)"),
    ("https://[1.2.3.4]/k", "not a valid URL"),
    ("https://[::1/k", "not a valid URL"),
    ("ftp://acct.r2.cloudflarestorage.com/k", "absolute http"),
    ("//acct.r2.cloudflarestorage.com/k", "absolute http"),
    ("https:acct.r2.cloudflarestorage.com/k", "absolute http"),
    ("https://acct.r2.cloudflarestorage.com/" + "k" * 8155, "longer than 8 KiB"),
    ("https://acct.r2.cloudflarestorage.com/" + "\u00e9" * 4078, "longer than 8 KiB"),  # bytes, not characters
])
def test_the_policy_refuses_what_parsers_may_read_differently(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=re.escape(reason)):
        parse_target(url)


@pytest.mark.parametrize(("url", "target"), [
    ("https://acct.r2.cloudflarestorage.com/k?X-Amz-Signature=s", ("https", "acct.r2.cloudflarestorage.com", 443)),
    ("HTTPS://Acct.R2.CloudflareStorage.com/k", ("https", "acct.r2.cloudflarestorage.com", 443)),
    ("http://127.0.0.1:9000/r2/k", ("http", "127.0.0.1", 9000)),
    ("https://[::1]:8443/k", ("https", "::1", 8443)),
    ("https://acct.r2.cloudflarestorage.com/a@b/%5C/\u00e9", ("https", "acct.r2.cloudflarestorage.com", 443)),
    ("https://acct.r2.cloudflarestorage.com/" + "k" * 8154, ("https", "acct.r2.cloudflarestorage.com", 443)),
])
def test_the_policy_takes_plain_urls(url: str, target: tuple[str, str, int]) -> None:
    assert parse_target(url) == Target(*target)


@settings(max_examples=300)
@given(st.from_regex(hosts._PLAIN_URL, fullmatch=True))
@example("https://h\n")  # "$" would match before a final newline: the fast path must not
def test_the_fast_path_agrees_with_the_full_check(url: str) -> None:
    try:
        slow: Any = hosts._parse_target(url)
    except UnsafeUrl as exc:
        slow = type(exc)
    try:
        fast: Any = parse_target(url)
    except UnsafeUrl as exc:
        fast = type(exc)
    assert fast == slow


# URL-like strings full of what makes parsers disagree: backslashes, "@", percent-escapes, brackets,
# colons, controls and full-width letters, in the authority and after it.
_NASTY = st.sampled_from(list("aZ09.-_~@:%[]\\/?#") + ["\n", "\t", "\x00", " ", "\uff45", "\u3002", "\u00e9"])
_URLISH = st.builds(
    lambda scheme, authority, rest: f"{scheme}://{authority}{rest}",
    st.sampled_from(["http", "https", "HTTPS", "hTTp", "ftp"]),
    st.one_of(st.text(_NASTY, max_size=24), st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
              st.builds(lambda h, p: f"{h}:{p}", st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
                        st.integers(0, 70000))),
    st.text(_NASTY, max_size=24),
)


@settings(max_examples=400)
@given(_URLISH)
@example(ATTACKER_BEHIND_BACKSLASH)
@example("https://[::ffff:1.2.3.4]:8443/k")
@example("https://[0:0:0:0:0:0:0:1]/k")
def test_every_url_the_policy_takes_is_read_alike_by_both_sending_libraries(url: str) -> None:
    try:
        target = parse_target(url)
    except UnsafeUrl:
        return
    assert upload_target(url) == target  # urllib3, which uploads
    assert callback_target(url) == target  # httpx, which calls back


# --- the sending library's reading, just before sending -------------------------------------------


@pytest.mark.parametrize("read", [upload_target, callback_target])
def test_a_url_both_read_alike_is_checked_against_the_allow_list(read: Any) -> None:
    url = "https://acct.r2.cloudflarestorage.com/k?X-Amz-Signature=s"
    assert check_url(url, R2, allow_insecure_http=False, what="upload", read_as_sent=read) == Target(
        "https", "acct.r2.cloudflarestorage.com", 443)
    with pytest.raises(HostNotAllowed, match="not in the allow-list"):
        check_url(url, ["api.trigger.dev"], allow_insecure_http=False, what="upload", read_as_sent=read)


def test_the_libraries_read_the_hostile_urls_otherwise_or_not_at_all() -> None:
    """What the policy guards against: each sending library, left alone, would go elsewhere or fail."""
    from urllib.parse import urlsplit
    assert urlsplit(ATTACKER_BEHIND_BACKSLASH).hostname == "acct.r2.cloudflarestorage.com"
    assert upload_target(ATTACKER_BEHIND_BACKSLASH).host == "attacker.example"
    for read in (upload_target, callback_target):
        with pytest.raises(Exception):  # noqa: B017 - each library has its own error type
            read(FULL_WIDTH)
    with pytest.raises(Exception):  # noqa: B017
        callback_target("https://acct.r2.cloudflarestorage.com\n.evil/k")


def reads_as(target: Target) -> Any:
    return lambda url: target


def fails_to_parse(url: str) -> Target:
    raise ValueError(f"Failed to parse: {url}")


def test_a_library_reading_another_host_makes_the_url_unsafe() -> None:
    url = "https://acct.r2.cloudflarestorage.com/k?X-Amz-Signature=s3cr3t"
    with pytest.raises(UnsafeUrl) as caught:
        check_url(url, R2, allow_insecure_http=False, what="upload",
                  read_as_sent=reads_as(Target("https", "attacker.example", 443)))
    assert str(caught.value) == ("the upload client reads it as https://attacker.example:443, "
                                 "not https://acct.r2.cloudflarestorage.com:443")


@pytest.mark.parametrize("other", [Target("http", "acct.r2.cloudflarestorage.com", 443),
                                   Target("https", "acct.r2.cloudflarestorage.com", 80)])
def test_a_library_reading_another_scheme_or_port_makes_the_url_unsafe(other: Target) -> None:
    with pytest.raises(UnsafeUrl, match="reads it as"):
        check_url("https://acct.r2.cloudflarestorage.com/k", R2, allow_insecure_http=True, what="upload",
                  read_as_sent=reads_as(other))


def test_a_library_failing_to_parse_makes_the_url_unsafe_without_quoting_it() -> None:
    with pytest.raises(UnsafeUrl) as caught:
        check_url("https://acct.r2.cloudflarestorage.com/k?X-Amz-Signature=s3cr3t", R2,
                  allow_insecure_http=False, what="callback", read_as_sent=fails_to_parse)
    assert str(caught.value) == "the callback client cannot parse it (ValueError)"


def test_unsafe_comes_before_the_allow_list_and_plain_http() -> None:
    # An unsafe URL is the payload's fault (invalid), whatever the config would say of its host.
    with pytest.raises(UnsafeUrl):
        check_url(ATTACKER_BEHIND_BACKSLASH.replace("https", "http"), [], allow_insecure_http=False,
                  what="upload", read_as_sent=upload_target)


# --- allow-list patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "parsed"), [
    ("*.r2.cloudflarestorage.com", ("*.r2.cloudflarestorage.com", None)),
    ("API.Trigger.dev", ("api.trigger.dev", None)),
    ("127.0.0.1:9000", ("127.0.0.1", 9000)),
    ("uploads.example.com:*", ("uploads.example.com", None)),
    ("*", ("*", None)),
    ("h?st_1.example", ("h?st_1.example", None)),
    ("::1", ("::1", None)),
    ("[::1]", ("::1", None)),
    ("[::1]:8080", ("::1", 8080)),
    ("[fe80::*]:*", ("fe80::*", None)),
])
def test_patterns(pattern: str, parsed: tuple[str, int | None]) -> None:
    assert parse_pattern(pattern) == parsed


@pytest.mark.parametrize(("pattern", "hint"), [
    ("https://uploads.example.com", "without a scheme"),
    ("http://127.0.0.1:9000", "without a scheme"),
    ("uploads.example.com/bucket", "a path"),
    ("uploads.example.com:0", ""),
    ("uploads.example.com:65536", ""),
    ("uploads.example.com:", ""),
    ("uploads.example.com:80*", ""),
    ("uploads.example.com:\u0661", ""),  # an Arabic-Indic digit is a digit to str.isdigit, not a port
    ("uploads.example.com ", ""),
    (" uploads.example.com", ""),
    ("", ""),
    ("user@uploads.example.com", ""),
    ("[::1", ""),
    ("[::1]8080", ""),
    ("[uploads.example.com]", ""),
    ("\uff45\uff58.example.com", ""),
])
def test_patterns_that_can_never_match_are_errors(pattern: str, hint: str) -> None:
    with pytest.raises(ValueError, match="is not a host, host:port \\(1-65535\\) or host:\\* pattern") as caught:
        parse_pattern(pattern)
    assert hint in str(caught.value)
