"""Hostile, signed events against a real ``fulfiller serve``: nothing a sender crafts breaks the promises.

A sender holding the signing secret (or a buggy publisher) controls every byte
of a ``video.source_requested`` body and every unsigned header. Hypothesis
mutates a valid event with values taken from what breaks URL parsers, path
joins, layout rendering, database indexes, JSON decoders and date arithmetic,
and sends them in batches to one ``fulfiller serve`` per store, SQLite and
PostgreSQL (two local catalogs of real masters, the platform double for uploads
and callbacks, and a trap listener outside the allow-lists). After each batch
it checks:

- every answer is 200, 202, 400, 401, 413 or 503, and the one SPEC gives for
  the input (400 for nesting over 64 levels or an event id over 255 bytes, 413
  over the body limit, 200 for a wait token already stored); the store is
  healthy, so a 503 that two redeliveries meet again is a failure too;
- one wait token makes at most one job, however its copies arrive;
- every job reaches a final status within the batch deadline, the one SPEC
  gives for its worst field ("Input a compromised or buggy sender can craft",
  the catalog layout notes), and an ``invalid`` job sent nothing anywhere;
- no job is closed by a lifecycle topic carried on a request's body;
- the trap got no connection; the admin API lists every page (200) and shows
  no credential of the URLs it was given; ``/readyz`` stays 200;
- a plain request sent with the batch completes.

After the batches, a plain request still completes, no job is left unfinished,
and ``/metrics``, the JSON log and ``fulfiller jobs`` still take every stored
job. The seeds are the cases issue 14 lists; the generated batches look for more.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fulfiller.jobs import FINAL
from fulfiller.ops.testevent import signed_headers
from support.fulfiller_proc import FulfillerProcess, fast_worker
from support.masters import media
from support.platform import PROJECT_ID, PlatformDouble, run_platform, source_requested
from support.postgres import pg_cluster, pg_database
from support.servers import fulfiller_command
from support.trap import Trap

BATCH_DEADLINE_S = 30.0
EXPIRES_IN_S = 180  # hostile jobs must end at once; a stuck one must not outlive the run by much
MAX_BODY = 1_048_576  # receiver.max_body_bytes' default
GENERIC_ANSWERS = frozenset({200, 202, 400, 401, 413, 503})
REQUESTED = "video.source_requested"
LIFECYCLE = ("video.source_timeout", "video.source_fulfilled", "video.source_rejected")
# Topic headers a captured request body can be re-sent under: none may make a job or close one ("": no header).
INERT_TOPICS = (*LIFECYCLE, "VIDEO.SOURCE_TIMEOUT", "")
CODE = "PROP"  # the creative every unmutated event asks for: its masters are in the catalog "local"
PROJECT_CODE = "PJ"  # the same, routed to "by-project", whose layout places the project's slug and id too
PROJECT_LAYOUT = "{project}/{project_id}/{code}/v{variation}/{locale}/{aspect}"
MASTERS = {"9x16": "9x16.mp4", "4x5": "4x5.mp4", "1x1": "1x1.mp4", "3x4": "3x4.mp4"}
_nonces = itertools.count()
_RUN = uuid.uuid4().hex[:6]

__all__ = ["pg_cluster", "pg_database"]  # fixtures, for the PostgreSQL run


# -- values a sender can write -------------------------------------------------------------------


@dataclass(frozen=True)
class Long:
    """``unit`` repeated ``n`` times (a printable stand-in for a long string)."""

    unit: str
    n: int

    def render(self) -> str:
        return self.unit * self.n


@dataclass(frozen=True)
class Deep:
    """``depth`` nested JSON arrays, spliced into the body's text (no encoder recursion)."""

    depth: int


@dataclass(frozen=True)
class Aspects:
    """``n`` distinct, well-formed aspects (``1x2``, ``2x3``, ...); 4x5 is among them from n >= 4."""

    n: int

    def render(self) -> list[str]:
        return [f"{i}x{i + 1}" for i in range(1, self.n + 1)]


@dataclass(frozen=True)
class ExpiresIn:
    """An ``expiresAt`` this many hours from the moment of sending."""

    hours: float

    def render(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + self.hours * 3600))


@dataclass(frozen=True)
class Url:
    """A URL of a named shape (``URL_SHAPES``), built around the event's real upload or callback path."""

    shape: str


# name -> (template, kind). {P}: the platform's port (allowed), {T}: the trap's (allowed nowhere), {path}: the
# event's real path and query, {n}: the event's nonce. Kinds: "forbidden" breaks SPEC's URL policy (the job is
# invalid and nothing is sent anywhere); "elsewhere" is a plain URL to a host outside the allow-list (nothing
# reaches it; the job ends invalid or failed, or skipped when the URL is never needed); "allowed" is neither.
URL_SHAPES: dict[str, tuple[str, str]] = {
    "backslash-userinfo": ("http://127.0.0.1:{T}\\@127.0.0.1:{P}{path}", "forbidden"),
    "userinfo-to-trap": ("http://127.0.0.1:{P}@127.0.0.1:{T}{path}", "forbidden"),
    "userinfo-to-platform": ("http://127.0.0.1:{T}@127.0.0.1:{P}{path}", "forbidden"),
    "user-password": ("http://user:pw{n}@127.0.0.1:{P}{path}", "forbidden"),
    "encoded-colon-userinfo": ("http://127.0.0.1%3A{T}@127.0.0.1:{P}{path}", "forbidden"),
    "tab-in-authority": ("http://127.0.0.1:{T}\t@127.0.0.1:{P}{path}", "forbidden"),
    "crlf-in-authority": ("http://127.0.0.1:{T}\r\n@127.0.0.1:{P}{path}", "forbidden"),
    "crlf-header-injection": ("http://127.0.0.1:{P}{path}\r\nX-Injected: 1", "forbidden"),
    "control-char": ("http://127.0.0.1:{P}{path}\x01", "forbidden"),
    "nul": ("http://127.0.0.1:{P}{path}\x00", "forbidden"),
    "del": ("http://127.0.0.1:{P}{path}\x7f", "forbidden"),
    "leading-space": (" http://127.0.0.1:{P}{path}", "forbidden"),
    "trailing-space": ("http://127.0.0.1:{P}{path} ", "forbidden"),
    "nbsp": ("http://127.0.0.1:{P}{path}\u00a0", "forbidden"),
    "backslash-path": ("http://127.0.0.1:{P}\\{path}", "forbidden"),
    "fullwidth-digit-host": ("http://127.0.0.\uff11:{P}{path}", "forbidden"),  # passes the 127.0.0.* glob
    "fullwidth-port": ("http://127.0.0.1:{P_fullwidth}{path}", "forbidden"),
    "ideographic-dots": ("http://127\u30020\u30020\u30021:{P}{path}", "forbidden"),
    "fullwidth-localhost-trap": ("http://" + "".join(chr(0xFEE0 + ord(c)) for c in "localhost") + ":{T}{path}",
                                 "forbidden"),
    "percent-host": ("http://127.0.0.%31:{P}{path}", "forbidden"),  # urllib3 decodes it, urllib.parse does not
    "double-port": ("http://127.0.0.1:{P}:{T}{path}", "forbidden"),
    "scheme-relative-trap": ("//127.0.0.1:{T}{path}", "forbidden"),
    "file": ("file:///etc/passwd?{n}", "forbidden"),
    "over-8kib": ("http://127.0.0.1:{P}{path}#" + "a" * 8200, "forbidden"),
    "fragment-at": ("http://127.0.0.1:{T}#@127.0.0.1:{P}{path}", "elsewhere"),
    "query-at": ("http://127.0.0.1:{T}?@127.0.0.1:{P}{path}", "elsewhere"),
    "ipv6-mapped-trap": ("http://[::ffff:127.0.0.1]:{T}{path}", "elsewhere"),
    "decimal-ip-trap": ("http://2130706433:{T}{path}", "elsewhere"),
    "https-trap": ("https://127.0.0.1:{T}{path}", "elsewhere"),
    "upper-scheme": ("HTTP://127.0.0.1:{P}{path}", "allowed"),
    "fragment-with-trap": ("http://127.0.0.1:{P}{path}#@127.0.0.1:{T}", "allowed"),
    "tokens-callback-hash": ("http://127.0.0.1:{P}/callbacks/tokens/wt{n}/callback/h{n}", "allowed"),
}


def _fullwidth(digits: int) -> str:
    return "".join(chr(0xFF10 + int(d)) for d in str(digits))


# -- what SPEC says each value leads to ----------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The final statuses a job may reach: the highest rank among a body's fields decides, and a field
    that may be refused may make the whole job invalid."""

    rank: int
    statuses: frozenset[str]

    def __or__(self, other: Verdict) -> Verdict:
        if self.rank != other.rank:
            top = self if self.rank > other.rank else other
            refusable = "invalid" in self.statuses | other.statuses
            return top.plus("invalid") if refusable else top
        return Verdict(self.rank, self.statuses | other.statuses)

    def plus(self, status: str) -> Verdict:
        return Verdict(self.rank, self.statuses | {status})


OK = Verdict(0, frozenset({"completed"}))
OK_OR_INVALID = Verdict(0, frozenset({"completed", "invalid"}))  # where SPEC is silent, refusing is fine too
SKIPPED = Verdict(1, frozenset({"skipped"}))
SKIPPED_OR_INVALID = Verdict(1, frozenset({"skipped", "invalid"}))
ELSEWHERE = Verdict(1, frozenset({"skipped", "invalid", "failed"}))
EXPIRED = Verdict(2, frozenset({"expired", "invalid"}))
INVALID = Verdict(3, frozenset({"invalid"}))


def _text_verdict(value: Any, *, limit: int | None) -> Verdict:
    """INVALID for what no field may hold (a non-string, NUL, lone surrogate, over ``limit`` bytes);
    OK_OR_INVALID for control characters or text over 1 KiB where SPEC sets no limit; else OK."""
    if not isinstance(value, str) or "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return INVALID
    size = len(value.encode("utf-8"))
    if limit is not None and size > limit:
        return INVALID
    odd = size > 1024 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    return OK_OR_INVALID if odd else OK


def verdict_of(path: str, value: Any, *, by_project: bool = False) -> Verdict:
    """What a body whose field ``path`` holds ``value`` (as sent) must lead to, per SPEC; ``by_project``: the
    request is routed to the catalog whose layout places projectSlug and projectId."""
    placeholders = ("creative.code", "creative.locale") + (("projectSlug", "projectId") if by_project else ())
    if path == "projectSlug" and value is None:  # optional: a layout that places it finds nothing
        return SKIPPED if by_project else OK
    if path in placeholders:
        # Every value here names no master, or one only a value spanning segments (or a glob, or a
        # placeholder rendered twice) would reach: a prompt no_match skip.
        bad = _text_verdict(value, limit=None if path == "projectSlug" else 1024)
        if bad is INVALID:
            return INVALID
        return SKIPPED if bad is OK and value.strip() else SKIPPED_OR_INVALID
    if path == "creative.variation":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
        return SKIPPED if ok else INVALID  # no master has another variation than 1
    if path == "creative.aspectRatio":
        return INVALID if _text_verdict(value, limit=1024) is INVALID else SKIPPED_OR_INVALID
    if path == "creative.kind":
        return SKIPPED if value == "image" else INVALID  # the catalog holds no image of the creative
    if path == "creative.acceptedAspects":
        if len(value) > 32 or "../x" in value:
            return INVALID
        zero = any("0" in a.split("x") for a in value)
        return SKIPPED_OR_INVALID if zero else OK
    if path in ("projectId", "fulfillment.storageKey"):
        return _text_verdict(value, limit=1024) if isinstance(value, str) and value.strip() else INVALID
    if path == "projectSlug":
        return _text_verdict(value, limit=None)
    if path == "fulfillment.expiresAt":
        return _deadline_verdict(value)
    if path in ("fulfillment.uploadUrl", "fulfillment.completeCallbackUrl"):
        return INVALID  # what is not a URL string (a URL of a known shape is judged by its shape)
    # Anywhere else (facebook, unknown keys) only what the stores cannot hold is refused.
    return _text_verdict(value, limit=None) if isinstance(value, str) else OK


def _deadline_verdict(value: Any) -> Verdict:
    """Past: expired; up to 24 hours ahead: fine; later, unreadable, or outside years 1-9999 in UTC: invalid."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        ahead = moment.timestamp() - time.time() if moment.tzinfo else None
        moment.astimezone(UTC)  # raises OverflowError outside years 1-9999
    except (AttributeError, ValueError, OverflowError):
        return INVALID
    if ahead is None or ahead > 24 * 3600:
        return INVALID
    return EXPIRED if ahead < 0 else OK


# -- cases ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Put:
    """Field ``path`` (dotted; list indexes as numbers) set to ``value``."""

    path: str
    value: Any


@dataclass(frozen=True)
class Case:
    """One mutated event and how it is delivered.

    ``event_id``: None for an ordinary id, a length to pad it to, or "tab" for one holding a tab.
    ``shadow``: a second ``fulfillment`` member aimed at the trap, placed "first" or "last" in the body.
    ``then``: once; redeliver (same id); replay (same body, fresh id); twin (same wait token, another
    storage key); race (three copies at once); or one of INERT_TOPICS on the same body.
    ``by_project``: the creative is PROJECT_CODE, in the catalog laid out by PROJECT_LAYOUT.
    """

    puts: tuple[Put, ...] = ()
    afs: bool = False
    event_id: int | str | None = None
    shadow: str | None = None
    then: str = "once"
    by_project: bool = False


PLACEHOLDERS = (
    "..", ".", "", " ", "a/b", "NEST/DEEP", "../outside/ESC", "PROP\\x", "PROP\x00", "PROP\ud800",
    "PROP\r\nforged: line", "PROP\x1f", "PROP\x7f", "\uff30\uff32\uff2f\uff30", "*", "PR?P", "[P]ROP",
    "{locale}", "{aspect}", "{0}", "{code.__class__}", "%s", Long("/", 40), Long("a/", 600), Long("x", 256),
    Long("x", 300), Long("\u00e9", 200), Long("x", 1025), Long("x", 3000), Deep(70), Deep(200),
)
HOSTILE_URLS = tuple(Url(name) for name in URL_SHAPES) + (None, 12345, "", Deep(70))
FIELDS: dict[str, tuple[Any, ...]] = {
    "creative.code": PLACEHOLDERS,
    "creative.locale": (*PLACEHOLDERS, "en/../en", "en/."),
    "creative.variation": (0, -1, 2**31, 2**63 - 1, 2**63, 2**64, 10**30, 1.5, True, "1", None, Deep(80)),
    "creative.kind": ("image", "audio", "", None, 1, "video\n", "video\x00"),
    "projectId": (Long("p", 1025), Long("p", 3000), "p\x00", "p\ud800", "", ".", "..", "../..", "p\r\nforged",
                  Long("p", 256), 12345, Deep(70)),
    "projectSlug": ("s\x00", Long("s", 3000), ".", "..", "../..", "hearty/..", "s\r\nforged", Long("s", 256), 7,
                    None, Deep(70)),
    "fulfillment.storageKey": (Long("k", 1025), Long("k", 3000), "k\x00", "", "../../etc/passwd",
                               "k\r\nforged", Long("/", 1000), "same-key", Deep(70)),
    "fulfillment.expiresAt": (
        "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59Z", "2999-01-01T00:00:00Z",
        "+10000-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "2030-01-01T00:00:00", "not a date", "", None, 1e20,
        ExpiresIn(25), ExpiresIn(23), ExpiresIn(-1), Long("9", 3000),
    ),
    "fulfillment.uploadUrl": HOSTILE_URLS,
    "fulfillment.completeCallbackUrl": HOSTILE_URLS,
    "facebook.ads.0.name": ("a\x00", "a\ud800", Long("n", 3000), "\r\nforged", Deep(70), Deep(900)),
    "x-extra": (Deep(60), Deep(70), Deep(200), Deep(900), "\x00", Long("x", MAX_BODY + 100)),
}
OSS_ONLY = {"creative.aspectRatio": ("9x16\n", "1x1/../9x16", "../9x16", "99999999999999999999x1", "\uff19x16",
                                     "9x16\x00", "0x0", "16x0", Long("9", 300), Deep(70))}
AFS_ONLY = {"creative.acceptedAspects": (Aspects(33), Aspects(110), Aspects(2000), Aspects(32), ("1x1", "../x"),
                                         ("0x0",), ("1x0",))}
EVENT_IDS = (None, 255, 256, 300, 3000, "tab")
THEN = ("once", "redeliver", "replay", "twin", "race", *INERT_TOPICS)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A case with up to three fields replaced from the pools, and any delivery the Case fields describe."""
    afs = draw(st.booleans())
    pool = {**FIELDS, **(AFS_ONLY if afs else OSS_ONLY)}
    paths = draw(st.lists(st.sampled_from(sorted(pool)), max_size=3, unique=True))
    puts = tuple(Put(p, draw(st.sampled_from(pool[p]))) for p in paths)
    return Case(puts, afs, draw(st.sampled_from(EVENT_IDS)), draw(st.sampled_from((None, None, "first", "last"))),
                draw(st.sampled_from(THEN)), draw(st.booleans()))


def _put(path: str, value: Any) -> tuple[Put, ...]:
    return (Put(path, value),)


# The cases issue 14 lists, and the traversals, globs and duplicates a careless reader would let through.
SEEDS: dict[str, Case] = {
    "upload URL, backslash before userinfo": Case(_put("fulfillment.uploadUrl", Url("backslash-userinfo"))),
    "callback URL with a control character": Case(_put("fulfillment.completeCallbackUrl", Url("control-char"))),
    "nesting just under the recursion limit": Case(_put("x-extra", Deep(900))),
    "expiresAt in year 10000 once in UTC": Case(_put("fulfillment.expiresAt", "9999-12-31T23:59:59-23:59")),
    "expiresAt in year 0 once in UTC": Case(_put("fulfillment.expiresAt", "0001-01-01T00:00:00+23:59")),
    "300-character code segment": Case(_put("creative.code", Long("x", 300))),
    "NUL in a creative field": Case(_put("creative.code", "PROP\x00")),
    "request body under video.source_timeout": Case(then="video.source_timeout"),
    "callback URL .../tokens/<id>/callback/<hash>": Case(_put("fulfillment.completeCallbackUrl",
                                                              Url("tokens-callback-hash"))),
    "code of many / segments": Case(_put("creative.code", Long("a/", 600))),
    "3,000-character code": Case(_put("creative.code", Long("x", 3000))),
    "3,000-character projectId": Case(_put("projectId", Long("p", 3000))),
    "3,000-character locale": Case(_put("creative.locale", Long("x", 3000))),
    "3,000-character storageKey": Case(_put("fulfillment.storageKey", Long("k", 3000))),
    "3,000-character event id": Case(event_id=3000),
    "110 acceptedAspects": Case(_put("creative.acceptedAspects", Aspects(110)), afs=True),
    "full-width upload host": Case(_put("fulfillment.uploadUrl", Url("fullwidth-digit-host"))),
    "one body replayed under a fresh event id": Case(then="replay"),
    "userinfo naming the trap": Case(_put("fulfillment.uploadUrl", Url("userinfo-to-trap"))),
    "userinfo in front of an allowed host": Case(_put("fulfillment.completeCallbackUrl",
                                                      Url("userinfo-to-platform"))),
    "code climbing out of the catalog": Case(_put("creative.code", "../outside/ESC")),
    "code spanning two segments": Case(_put("creative.code", "NEST/DEEP")),
    "locale climbing back in": Case(_put("creative.locale", "en/../en")),
    "code that is a glob": Case(_put("creative.code", "*")),
    "code that is a placeholder": Case(_put("creative.code", "{locale}")),
    "one storage key for two requests": Case(_put("fulfillment.storageKey", "same-key")),
    "expiresAt 25 hours ahead": Case(_put("fulfillment.expiresAt", ExpiresIn(25))),
    "lone surrogate in projectId": Case(_put("projectId", "p\ud800")),
    "upper-case scheme on the callback": Case(_put("fulfillment.completeCallbackUrl", Url("upper-scheme"))),
    "a second fulfillment member before the real one": Case(shadow="first"),
    "a second fulfillment member after the real one": Case(shadow="last"),
    "one wait token, another storage key": Case(then="twin"),
    "three copies at once": Case(then="race"),
    "an aspect with a zero side": Case(_put("creative.acceptedAspects", ("0x0",)), afs=True),
    "a creative laid out by project": Case(by_project=True),
    "project slug climbing out of the catalog": Case(_put("projectSlug", ".."), by_project=True),
    "project id naming the slug's own folder": Case(_put("projectId", "."), by_project=True),
    "nesting hidden in a member a later duplicate replaces": Case(_put("fulfillment.storageKey", Deep(900)),
                                                                  shadow="last"),
}


def _seed_batches(size: int = 6) -> list[list[Case]]:
    seeds = list(SEEDS.values())
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


# -- building and sending ------------------------------------------------------------------------


@dataclass
class Sent:
    """One delivery, its answer, and what SPEC expects of it."""

    what: str
    event_id: str
    topic: str
    answer: int
    answers: frozenset[int]  # the answers SPEC allows
    verdict: Verdict  # the job a stored request must end as
    nonce: str  # names the event's upload key (up-<nonce>/...) and wait token (wt<nonce>)
    credentials: tuple[str, ...]  # what the admin API must never show
    one_token: bool  # its wait token is a string: all its copies make one job

    @property
    def makes_job(self) -> bool:
        return self.topic == REQUESTED and self.answer == 202


@dataclass
class Stack:
    """The fulfiller under test and its peers, with the sending and reading the checks need."""

    proc: FulfillerProcess
    platform: PlatformDouble
    trap: Trap
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    @property
    def platform_port(self) -> int:
        return int(urlsplit(self.platform.base_url).port or 0)

    def post(self, body: bytes, topic: str, event_id: str) -> int:
        """Deliver as Outpost does, redelivering a 503 twice: a 503 that persists on a healthy store is a bug."""
        headers = signed_headers(body, [self.proc.secret], topic=topic, event_id=event_id)
        if not topic:
            del headers["x-outpost-topic"]
        with httpx.Client(timeout=30) as client:  # one per call: race copies are posted from threads
            for _ in range(3):
                status = client.post(f"{self.proc.base_url}/webhooks/outpost", content=body,
                                     headers=headers).status_code
                if status != 503:
                    break
            return status

    def event(self, nonce: str, *, afs: bool,
              code: str = CODE) -> tuple[dict[str, Any], dict[str, str], tuple[str, ...]]:
        """A valid event for ``code``; the paths its URLs hold; the credentials in them."""
        aspect = "feed" if afs else "9x16"
        upload = self.platform.presign(f"up-{nonce}/{aspect}.video", expires_in=EXPIRES_IN_S + 60)
        callback = self.platform.callback_url(f"wt{nonce}")
        shape = {"family": "feed"} if afs else {"aspect": "9x16"}
        event = source_requested(code, upload_url=upload, callback_url=callback, **shape,
                                 key=f"fb-external/{PROJECT_ID}/{code}-{nonce}/v1/en/{aspect}.video",
                                 expires_at=time.time() + EXPIRES_IN_S)
        signature = parse_qs(urlsplit(upload).query)["X-Amz-Signature"][0]
        paths = {"fulfillment.uploadUrl": _path(upload), "fulfillment.completeCallbackUrl": _path(callback)}
        return event, paths, (signature, f"wt{nonce}", f"pw{nonce}", f"h{nonce}")

    def build(self, case: Case, nonce: str) -> tuple[bytes, Verdict, tuple[str, ...], str | None]:
        """The body ``case`` describes, the verdict SPEC gives it, the credentials in it, and its wait token
        (the callback URL a reader keeping the last member sees; None when it is not a string)."""
        event, paths, credentials = self.event(nonce, afs=case.afs, code=PROJECT_CODE if case.by_project else CODE)
        verdict, deep, odd_url = OK, {}, False
        for put in case.puts:
            value = self._render(put, paths, nonce, deep)
            _assign(event, put.path, value)
            if case.shadow == "last" and put.path.startswith("fulfillment."):
                continue  # a reader keeping the last member never sees this one (ELSEWHERE below)
            if isinstance(put.value, Url):
                kind = URL_SHAPES[put.value.shape][1]
                odd_url |= kind == "allowed"
                verdict |= {"forbidden": INVALID, "elsewhere": ELSEWHERE, "allowed": OK}[kind]
            elif not isinstance(put.value, Deep):
                verdict |= verdict_of(put.path, value, by_project=case.by_project)
        if odd_url and verdict.rank <= SKIPPED.rank:
            verdict = verdict.plus("failed")  # the platform may refuse an odd (allowed) URL's request
        token = event["fulfillment"]["completeCallbackUrl"]
        body = json.dumps(event).encode()
        for marker, depth in deep.items():
            body = body.replace(json.dumps(marker).encode(), b"[" * depth + b"]" * depth)
        if case.shadow:
            shadow = json.dumps({
                "uploadUrl": f"http://127.0.0.1:{self.trap.port}/r2/up-{nonce}/shadow",
                "storageKey": f"shadow-{nonce}", "expiresAt": ExpiresIn(EXPIRES_IN_S / 3600).render(),
                "completeCallbackUrl": f"http://127.0.0.1:{self.trap.port}/callbacks/tokens/wt{nonce}/complete",
            }).encode()
            member = b'"fulfillment": ' + shadow
            body = b"{" + member + b", " + body[1:] if case.shadow == "first" else body[:-1] + b", " + member + b"}"
            if case.shadow == "last":  # a reader that keeps the last member sees URLs outside the allow-list
                verdict |= ELSEWHERE
                token = json.loads(shadow)["completeCallbackUrl"]
        return body, verdict, credentials, token if isinstance(token, str) else None

    def send(self, case: Case) -> list[Sent]:
        """Build, sign and send ``case`` and what follows it; every delivery with its answer."""
        nonce = f"{_RUN}{next(_nonces):05d}x"
        body, verdict, credentials, token = self.build(case, nonce)
        one_token = token is not None
        event_id = _event_id(case.event_id, nonce)

        def sent(what: str, event_id: str, topic: str, answer: int, answers: frozenset[int]) -> Sent:
            return Sent(what, event_id, topic, answer, answers, verdict, nonce, credentials, one_token)

        def first(event_id: str) -> frozenset[int]:
            answers = _first_answers(body, event_id, case)
            if token is not None and nonce not in token and 202 in answers:
                answers |= {200}  # a wait token other cases carry too (""): it may be stored already
            return answers

        if case.then == "race":
            ids = [_event_id(case.event_id, f"{nonce}r{i}") for i in range(3)]
            with ThreadPoolExecutor(3) as pool:
                answers = list(pool.map(lambda i: self.post(body, REQUESTED, i), ids))
            out = []
            for i, answer in enumerate(answers):
                allowed = first(ids[i])
                allowed |= {200} if 202 in allowed else set()  # the copies after the first stored one
                out.append(sent(f"{case} copy {i} (nonce {nonce})", ids[i], REQUESTED, answer, allowed))
            return out
        answer = self.post(body, REQUESTED, event_id)
        out = [sent(f"{case} (nonce {nonce})", event_id, REQUESTED, answer, first(event_id))]
        if case.then == "once":
            return out
        again_id = event_id if case.then == "redeliver" else f"evt_{nonce}_again"
        topic = case.then if case.then in INERT_TOPICS else REQUESTED
        if case.then == "twin":
            body = body.replace(f"-{nonce}/v1/".encode(), f"-{nonce}-twin/v1/".encode())  # the storage key
        again = self.post(body, topic, again_id)
        if answer not in (200, 202):  # nothing was stored: this one is judged as a first delivery
            expect = first(again_id)
        elif topic in INERT_TOPICS:  # stored and inert
            expect = frozenset({200, 202})
        else:  # the same event id, or the same wait token: a duplicate
            expect = frozenset({200}) if one_token or case.then == "redeliver" else frozenset({200, 202})
        out.append(sent(f"{case.then!r} of nonce {nonce}", again_id, topic, again, expect))
        return out

    def _render(self, put: Put, paths: dict[str, str], nonce: str, deep: dict[str, int]) -> Any:
        value = put.value
        if isinstance(value, Deep):
            marker = f"__deep_{nonce}_{len(deep)}__"
            deep[marker] = value.depth
            return marker
        if isinstance(value, Url):
            template = URL_SHAPES[value.shape][0]
            return template.format(P=self.platform_port, T=self.trap.port, path=paths[put.path], n=nonce,
                                   P_fullwidth=_fullwidth(self.platform_port))
        if isinstance(value, (Long, Aspects, ExpiresIn)):
            return value.render()
        return list(value) if isinstance(value, tuple) else value

    def canary(self) -> tuple[str, str]:
        """Send a plain request; its event id and upload key."""
        nonce = f"{_RUN}{next(_nonces):05d}c"
        event, _, _ = self.event(nonce, afs=False)
        event_id = f"evt_{nonce}"
        answer = self.post(json.dumps(event).encode(), REQUESTED, event_id)
        assert answer == 202, f"a plain request was answered {answer}"
        return event_id, f"up-{nonce}/9x16.video"

    def admin_get(self, path: str, **params: Any) -> httpx.Response:
        return self.http.get(f"{self.proc.base_url}{path}", params=params,
                             headers={"Authorization": f"Bearer {self.proc.admin_token}"})


def _event_id(spec: int | str | None, nonce: str) -> str:
    """A fresh event id for ``nonce``, padded to ``spec`` characters or holding a tab."""
    if spec == "tab":
        return f"evt {nonce}\twith tab"
    return f"evt_{nonce}".ljust(spec if isinstance(spec, int) else 0, "e")


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _assign(event: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = event
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _first_answers(body: bytes, event_id: str, case: Case) -> frozenset[int]:
    """What SPEC answers the first delivery of ``body`` under ``event_id``."""
    bad = any(isinstance(p.value, Deep) and p.value.depth > 64 for p in case.puts) or len(event_id.encode()) > 255
    if len(body) > MAX_BODY:
        return frozenset({413, 400}) if bad else frozenset({413})
    if bad:
        return frozenset({400})
    # A lone surrogate (SPEC: invalid) or a duplicate member (SPEC: silent): refusing the body is as safe.
    refusable = b"\\ud800" in body or case.shadow is not None
    return frozenset({202, 400}) if refusable else frozenset({202})


# -- invariants ----------------------------------------------------------------------------------


def _wait_for_jobs(stack: Stack, event_ids: set[str], problems: list[str],
                   others: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The jobs of ``event_ids`` once all are final (or what the deadline left), and any job of ``others``
    (events that must make none); the newest 200 jobs are polled."""
    deadline = time.monotonic() + BATCH_DEADLINE_S
    while True:
        response = stack.admin_get("/admin/jobs", limit=200)
        if response.status_code != 200:
            problems.append(f"[admin] GET /admin/jobs answered {response.status_code}: {response.text[:300]}")
            return {}
        found = {j["event_id"]: j for j in response.json()["jobs"] if j["event_id"] in event_ids | others}
        if event_ids <= set(found) and all(j["status"] in FINAL for j in found.values()):
            return found
        if time.monotonic() > deadline:
            missing = sorted(event_ids - set(found))
            if missing:
                problems.append(f"[intake] answered 202 but no job for events {[m[:40] for m in missing]}")
            for job in found.values():
                if job["status"] not in FINAL:
                    problems.append(f"[worker] job {job['id']} still {job['status']} after {BATCH_DEADLINE_S}s: "
                                    f"error={job.get('error')!r} attempts={len(job.get('attempts') or [])}")
            return found
        time.sleep(0.1)  # poll interval; the deadline bounds the wait


def _check_job(stack: Stack, sent: Sent, job: dict[str, Any], problems: list[str]) -> None:
    detail = stack.admin_get(f"/admin/jobs/{job['id']}")
    if detail.status_code != 200:
        problems.append(f"[admin] GET /admin/jobs/{job['id']} answered {detail.status_code} for {sent.what}")
        return
    status, why = job["status"], f"error={job.get('error')!r}, skip_reason={job.get('skip_reason')!r}"
    if status in FINAL and status not in sent.verdict.statuses:
        problems.append(f"[outcome] {sent.what}: ended {status} ({why}), SPEC wants {sorted(sent.verdict.statuses)}")
    if status == "skipped" and not str(job.get("skip_reason")).startswith("no_match"):
        problems.append(f"[outcome] {sent.what}: skipped, but not as no_match ({why})")
    if status == "invalid":
        uploads = [u for u in stack.platform.uploads() if u.key.startswith(f"up-{sent.nonce}/")]
        callbacks = stack.platform.callbacks(f"wt{sent.nonce}")
        if uploads or callbacks:
            problems.append(f"[sent] {sent.what}: invalid, yet {len(uploads)} upload(s) and {len(callbacks)} "
                            f"callback(s) reached the platform")
    shown = json.dumps(job) + detail.text
    leaked = [c for c in sent.credentials if c in shown]
    if leaked:
        problems.append(f"[redaction] {sent.what}: the admin API shows {leaked}")


def _check_answers(sent: list[Sent]) -> list[str]:
    problems = []
    for s in sent:
        if s.answer not in GENERIC_ANSWERS:
            problems.append(f"[answer] {s.what}: answered {s.answer}")
        elif s.answer not in s.answers:
            problems.append(f"[intake] {s.what}: answered {s.answer}, SPEC wants {sorted(s.answers)}")
    made = Counter(s.nonce for s in sent if s.makes_job and s.one_token)
    problems.extend(f"[intake] one wait token (nonce {nonce}) made {n} jobs" for nonce, n in made.items() if n > 1)
    return problems


def _check_listing(stack: Stack) -> list[str]:
    """Problems paging through every job the admin API lists."""
    offset: int | None = 0
    while offset is not None:
        response = stack.admin_get("/admin/jobs", limit=100, offset=offset)
        if response.status_code != 200:
            return [f"[admin] GET /admin/jobs?offset={offset} answered {response.status_code}: {response.text[:300]}"]
        offset = response.json().get("next_offset")
    return []


def check_batch(stack: Stack, batch: list[Case]) -> list[str]:
    """Send ``batch`` and a plain request; every broken invariant, as a line naming its area."""
    trap_before = stack.trap.connections
    sent = [s for case in batch for s in stack.send(case)]
    canary_id, canary_key = stack.canary()
    problems = _check_answers(sent)
    making = {s.event_id: s for s in sent if s.makes_job}
    inert = frozenset(s.event_id for s in sent if s.event_id not in making)
    jobs = _wait_for_jobs(stack, {*making, canary_id}, problems, inert)
    for event_id, job in jobs.items():
        if event_id in making:
            _check_job(stack, making[event_id], job, problems)
        elif event_id in inert:
            what = [s.what for s in sent if s.event_id == event_id]
            problems.append(f"[intake] {what} made job {job['id']} ({job['status']}) though its answer says none")
    canary = jobs.get(canary_id)
    if canary is None or canary["status"] != "completed" or stack.platform.stored(canary_key) is None:
        problems.append(f"[worker] the plain request sent with the batch did not complete: "
                        f"{canary and (canary['status'], canary.get('error'))}")
    if stack.trap.connections != trap_before:
        problems.append(f"[URL policy] the trap got {stack.trap.connections - trap_before} connection(s)")
    problems.extend(_check_listing(stack))
    ready = stack.http.get(f"{stack.proc.base_url}/readyz")
    if ready.status_code != 200:
        problems.append(f"[worker] /readyz answered {ready.status_code}: {ready.text[:200]}")
    return problems


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack on each store: NULs, index sizes and dates break them in different ways."""
    root = tmp_path_factory.mktemp("hostile")
    catalog, by_project = root / "masters", root / "by-project"
    # The creatives' masters, and masters that only a value leaving its one segment (or a glob, or a
    # placeholder rendered twice) would reach.
    for folder in (catalog / CODE, catalog / "NEST" / "DEEP", catalog / "en", catalog / "9x16",
                   root / "outside" / "ESC", by_project / "hearty" / PROJECT_ID / PROJECT_CODE,
                   by_project / PROJECT_ID / PROJECT_CODE, root / PROJECT_ID / PROJECT_CODE,
                   by_project / "hearty" / PROJECT_CODE, by_project / PROJECT_CODE):
        (folder / "v1" / "en").mkdir(parents=True)
        for aspect, name in MASTERS.items():
            (folder / "v1" / "en" / f"{aspect}.mp4").write_bytes(media(name))
    with Trap() as trap, run_platform(root / "platform") as platform:
        port = urlsplit(platform.base_url).port
        # The glob lets a host with a full-width digit through the pattern match, as *.r2... would.
        allowed = [f"127.0.0.1:{port}", f"127.0.0.*:{port}"]
        config = {
            "worker": fast_worker(allowed, allowed),
            "aspects": {"feed": ["4x5", "1x1", "3x4"], "story_reel": ["9x16"]},
            "catalogs": {"local": {"type": "local", "root": str(catalog)},
                         "by-project": {"type": "local", "root": str(by_project), "layout": PROJECT_LAYOUT}},
            "routes": [{"codes": [PROJECT_CODE], "catalog": "by-project"}, {"codes": ["*"], "catalog": "local"}],
        }
        if request.param == "postgresql":
            config["state"] = request.getfixturevalue("pg_database")
        with FulfillerProcess(root / "fulfiller", config) as proc:
            stack = Stack(proc, platform, trap)
            try:
                yield stack
            finally:
                stack.http.close()


@settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batch=st.lists(cases(), min_size=1, max_size=6))
def _hostile_batches(stack: Stack, batch: list[Case]) -> None:
    problems = check_batch(stack, batch)
    assert not problems, "\n".join(problems)


for _seeds in reversed(_seed_batches()):
    _hostile_batches = example(batch=_seeds)(_hostile_batches)


def test_hostile_batches_keep_every_promise(stack: Stack) -> None:
    _hostile_batches(stack)


def test_a_plain_request_completes_after_the_hostile_batches(stack: Stack) -> None:
    event_id, key = stack.canary()
    problems: list[str] = []
    jobs = _wait_for_jobs(stack, {event_id}, problems)
    assert not problems, "\n".join(problems)
    assert jobs[event_id]["status"] == "completed", jobs[event_id]
    stored = stack.platform.stored(key)
    assert stored is not None and stored.read_bytes() == media("9x16.mp4")
    assert [(j["id"], j["status"]) for j in stack.proc.jobs() if j["status"] not in FINAL] == []
    assert stack.trap.connections == 0, stack.trap.peers
    assert stack.http.get(f"{stack.proc.base_url}/metrics").status_code == 200
    # Whatever the payloads and peers held, each log line is still one JSON record (nothing forged or raw).
    lines = [line for line in stack.proc.log_text().splitlines() if line.strip()]
    assert len(stack.proc.serve.log_lines()) == len(lines), f"a line of {stack.proc.serve.log_path} is not JSON"
    # The CLI renders every stored job too, however odd.
    listed = subprocess.run([*fulfiller_command(), "jobs", "--config", str(stack.proc.config_path), "--json"],
                            capture_output=True, timeout=60)
    assert listed.returncode == 0, listed.stderr.decode(errors="replace")[-2000:]
