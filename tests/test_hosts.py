"""Allow-lists for where bytes and callbacks may go: host globs, port pinning, plain http."""

from __future__ import annotations

import pytest

from fulfiller.hosts import HostNotAllowed, check_url

R2 = ["*.r2.cloudflarestorage.com"]


def allowed(url: str, patterns: list[str], *, insecure: bool = False) -> bool:
    try:
        check_url(url, patterns, allow_insecure_http=insecure, what="upload")
    except HostNotAllowed:
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
    # A ValueError here would crash the job (and retake it on every lease lapse) instead of failing it.
    with pytest.raises(HostNotAllowed, match="upload URL has a malformed host or port"):
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
