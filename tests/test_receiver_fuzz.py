"""Random deliveries at the receiver: whatever arrives, the answer is one SPEC allows and the store agrees.

Bodies range from well-formed platform events (mutated or not) through other
JSON values to arbitrary bytes; headers carry valid, stale, foreign, tampered
or garbled signatures, random event ids and topics. After every example the
store is read back: it holds exactly the events that were answered 202, each
job it made can be shown by the admin API, and nothing unsigned got in. A
request is a duplicate (200) when its event id or its wait token (the callback
URL) was taken before.

The app runs in-process (ASGI) with its real lifespan and a real SQLite file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from fulfiller.app import create_app
from fulfiller.config import load_config
from fulfiller.intake.signing import sign_outpost
from fulfiller.ops.testevent import sample_event
from support.servers import TEST_ADMIN_TOKEN, TEST_SECRET, write_config

MAX_BODY = 16384
PREFIX = "x-outpost-"
TOPICS = ["video.source_requested", "video.source_fulfilled", "video.source_rejected", "video.source_timeout"]
UPLOAD = "https://acct.r2.cloudflarestorage.com/bucket/key?X-Amz-Signature=abc"
CALLBACK = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete"
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
# Within the 24 hours a request may look ahead, and the same bytes on every replay during a run.
EXPIRES = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(time.time() + 12 * 3600))


# --- strategies -----------------------------------------------------------------------------------

# JSON leaves the platform could send: finite numbers, any (encodable) text.
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)
json_values = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


@st.composite
def platform_events(draw: st.DrawFn) -> dict[str, Any]:
    """A documented OSS/AFS event, often with one field broken or replaced; wait tokens repeat at times."""
    token = draw(st.text(alphabet="abc", min_size=1, max_size=3))
    event = sample_event(UPLOAD, CALLBACK.replace("abc", token),
                         code=draw(st.sampled_from(["HRT-1212", "ABC-1", "Ü-7"])))
    event["fulfillment"]["expiresAt"] = EXPIRES
    if draw(st.booleans()):
        del event["creative"]["aspectRatio"]
        event["creative"].update(placementFamily="feed", acceptedAspects=["1x1", "4x5"])
    for _ in range(draw(st.integers(0, 2))):
        sections = [event] + [event[k] for k in ("creative", "fulfillment") if isinstance(event.get(k), dict)]
        section = draw(st.sampled_from(sections))
        key = draw(st.sampled_from(sorted(section) + ["extra"]))
        if draw(st.booleans()):
            section.pop(key, None)
        else:
            section[key] = draw(json_values)
    return event


def hostile(change: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A documented request with the fields in ``change`` replaced, under its own wait token."""
    event = sample_event(UPLOAD, CALLBACK.replace("abc", "hostile-" + "-".join(sorted(change))))
    for section, fields in change.items():
        event[section].update(fields)
    return event


def wait_token(body: bytes) -> str | None:
    """The callback URL a request's body names, as the store keys it; None when it names none."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    fulfillment = data.get("fulfillment") if isinstance(data, dict) else None
    token = fulfillment.get("completeCallbackUrl") if isinstance(fulfillment, dict) else None
    return token if isinstance(token, str) else None


def encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")


# Bodies Python's json module is lenient about, or that stress the parser.
ODD_BODIES = {
    "nan": b'{"a": NaN}', "-infinity": b'{"a": -Infinity}', "overflowing float": b'{"a": 1e999}',
    "lone surrogate": b'{"a": "\\udc00"}', "surrogate pair": b'{"a": "\\ud83d\\ude00"}',
    "utf-8 bom": b'\xef\xbb\xbf{"bom": 1}', "utf-16": '{"u": "\u00e9"}'.encode("utf-16"),
    "two objects": b'{"a": 1}{"b": 2}', "trailing space": b'{"a": 1} ', "spaces around": b' {} ',
    "too deep": b'{"a": ' + b"[" * 3000 + b"]" * 3000 + b"}", "deep": b'{"a": ' + b"[" * 500 + b"]" * 500 + b"}",
    "64 levels": b'{"a": ' + b"[" * 63 + b"]" * 63 + b"}", "65 levels": b'{"a": ' * 64 + b"{}" + b"}" * 64,
    "huge int": b'{"big": ' + b"9" * 5000 + b"}",
    "huge variation": json.dumps({
        **sample_event(UPLOAD, CALLBACK),
        "creative": {"code": "A", "variation": 2**64, "locale": "en", "aspectRatio": "9x16", "kind": "video"},
        "fulfillment": {"uploadUrl": UPLOAD, "storageKey": "fb-external/p/A/v2/en/9x16.video",
                        "expiresAt": "2099-01-01T00:00:00Z", "completeCallbackUrl": CALLBACK},
    }).encode(),
    # The hostile cases SPEC names: each an invalid job (or, for a lifecycle topic, a note), never a 5xx.
    **{name: json.dumps(hostile(change)).encode() for name, change in {
        "nul in code": {"creative": {"code": "HRT\x00"}},
        "lone surrogate in locale": {"creative": {"locale": "\ud800"}},
        "long storage key": {"fulfillment": {"storageKey": "k" * 3000}},
        "year 10000": {"fulfillment": {"expiresAt": "9999-12-31T23:59:59-23:59"}},
        "33 aspects": {"creative": {"aspectRatio": None, "placementFamily": "feed",
                                    "acceptedAspects": [f"{n}x1" for n in range(1, 34)]}},
    }.items()},
}

# (body, what it is): "object" must be taken, "other" must be refused 400, "any" is for the receiver to judge.
bodies = st.one_of(
    st.tuples(platform_events(), st.booleans()).map(lambda t: (encode(*t), "object")),
    st.tuples(json_objects, st.booleans()).map(lambda t: (encode(*t), "object")),
    st.tuples(json_values.filter(lambda v: not isinstance(v, dict)), st.booleans()).map(
        lambda t: (encode(*t), "other")),
    st.binary(max_size=300).map(lambda b: (b, "any")),
    st.sampled_from(sorted(ODD_BODIES)).map(lambda name: (ODD_BODIES[name], "any")),
    st.integers(MAX_BODY - 2, MAX_BODY + 64).map(
        lambda n: (b'{"p": "' + b"x" * (n - 9) + b'"}', "object")),
)

header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
SIGNATURES = ["valid", "valid-timestamped", "valid-rotation", "wrong-secret", "tampered", "stale", "missing",
              "empty", "garbage", "uppercase-hex"]
VALID = {"valid", "valid-timestamped", "valid-rotation", "uppercase-hex"}


def signature(kind: str, body: bytes, garbage: str) -> str | None:
    now = int(time.time())
    return {
        "valid": lambda: sign_outpost(body, [TEST_SECRET]),
        "valid-timestamped": lambda: sign_outpost(body, [TEST_SECRET], timestamp=now),
        "valid-rotation": lambda: sign_outpost(body, ["whsec_the-next-one", TEST_SECRET]),
        "uppercase-hex": lambda: "v0=" + sign_outpost(body, [TEST_SECRET])[3:].upper(),
        "wrong-secret": lambda: sign_outpost(body, ["whsec_someone-else"]),
        "tampered": lambda: sign_outpost(body + b"\n", [TEST_SECRET]),
        "stale": lambda: sign_outpost(body, [TEST_SECRET], timestamp=now - 3600),
        "missing": lambda: None,
        "empty": lambda: "",
        "garbage": lambda: garbage,
    }[kind]()


# --- the property, as a state machine: each run starts from a fresh store, so failures replay ------------


class IntakeMachine(RuleBasedStateMachine):
    """Deliveries in any order against one app and store; the store is checked after every step."""

    portal: BlockingPortal  # set by the test that runs the machine
    base_dir: Path
    runs = 0

    def __init__(self) -> None:
        super().__init__()
        IntakeMachine.runs += 1
        directory = self.base_dir / f"run{self.runs}"
        directory.mkdir()
        self.db = directory / "state.db"
        config = write_config(directory, f"sqlite:///{self.db}", receiver={"max_body_bytes": MAX_BODY})
        app = create_app(load_config(config, env={}))
        self._lifespan = self.portal.wrap_async_context_manager(app.router.lifespan_context(app))
        self._lifespan.__enter__()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fulfiller.test")
        self.accepted: set[str] = set()  # event ids answered 202
        self.requested: set[str] = set()  # ... of those, the video.source_requested ones
        self.tokens: set[str] = set()  # ... and the wait tokens their jobs hold
        self.signed: list[tuple[bytes, dict[str, str], str]] = []  # valid deliveries, for redelivery

    def teardown(self) -> None:
        self.portal.call(self.client.aclose)
        self._lifespan.__exit__(None, None, None)

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.portal.call(lambda: self.client.post("/webhooks/outpost", content=body, headers=headers))

    def admin(self, path: str) -> httpx.Response:
        return self.portal.call(lambda: self.client.get(path, headers=ADMIN))

    def stored(self) -> tuple[set[str], dict[str, str]]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            events = {r[0] for r in conn.execute("SELECT event_id FROM events")}
            jobs = dict(conn.execute("SELECT event_id, id FROM jobs").fetchall())
        finally:
            conn.close()
        return events, jobs

    @rule(
        body_kind=bodies,
        sig_kind=st.sampled_from(SIGNATURES),
        garbage=header_text,
        topic=st.one_of(st.sampled_from(TOPICS), header_text, st.none()),
        event_id=st.one_of(st.none(), st.just(""), header_text, st.sampled_from(["evt_1", "evt_2", "evt_3"])),
        extra=st.dictionaries(st.sampled_from([f"{PREFIX}timestamp", f"{PREFIX}x", "content-type", "webhook-id"]),
                              header_text, max_size=2),
    )
    def deliver(self, body_kind: tuple[bytes, str], sig_kind: str, garbage: str, topic: str | None,
                event_id: str | None, extra: dict[str, str]) -> None:
        body, kind = body_kind
        headers = dict(extra)
        sig = signature(sig_kind, body, garbage)
        if sig is not None:
            headers[f"{PREFIX}signature"] = sig
        if topic is not None:
            headers[f"{PREFIX}topic"] = topic
        if event_id is not None:
            headers[f"{PREFIX}event-id"] = event_id
        effective_id = event_id or "sha256:" + hashlib.sha256(body).hexdigest()
        token = wait_token(body) if topic == "video.source_requested" else None
        duplicate = effective_id in self.accepted or token in self.tokens
        before, _ = self.stored()

        response = self.post(body, headers)
        status = response.status_code

        assert status < 500, (status, response.text)
        if len(body) > MAX_BODY:
            assert status == 413
        elif sig_kind not in VALID:
            assert status == 401
        elif kind == "other":
            assert status == 400
        elif kind == "object":
            assert status == (200 if duplicate else 202), response.text
        else:
            assert status in (200, 202, 400)
        if status in (200, 202):
            assert response.json()["event_id"] == effective_id
            assert (status == 200) == duplicate
            self.signed.append((body, headers, effective_id))
        if status == 202:
            self.accepted.add(effective_id)
            if topic == "video.source_requested":
                self.requested.add(effective_id)
                if token is not None:
                    self.tokens.add(token)
        events, jobs = self.stored()
        assert (events - before) == ({effective_id} if status == 202 else set())
        if status == 202 and effective_id in jobs:
            # An operator can see the job it made (whatever odd data the event carried).
            shown = self.admin(f"/admin/jobs/{jobs[effective_id]}")
            assert shown.status_code == 200, shown.text
            assert shown.json()["event_id"] == effective_id
            # queued or invalid; or already closed by a lifecycle event that arrived before it
            assert shown.json()["status"] in ("queued", "invalid", "fulfilled", "rejected", "timed_out")

    @precondition(lambda self: bool(self.signed))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """Outpost's retry of something already taken: 200, nothing new stored."""
        body, headers, effective_id = data.draw(st.sampled_from(self.signed))
        response = self.post(body, headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "duplicate", "event_id": effective_id}

    @invariant()
    def store_holds_exactly_what_was_acked(self) -> None:
        events, jobs = self.stored()
        # Nothing unsigned, refused or duplicated got in; nothing acked is missing.
        assert events == self.accepted
        # One job per stored request event.
        assert set(jobs) == self.requested

    @invariant()
    def admin_list_renders(self) -> None:
        listed = self.admin("/admin/jobs?limit=500")
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["jobs"]) == len(self.requested)


def test_any_delivery_gets_an_allowed_answer_and_the_store_agrees(tmp_path: Path) -> None:
    with start_blocking_portal() as portal:
        IntakeMachine.portal = portal
        IntakeMachine.base_dir = tmp_path
        run_state_machine_as_test(IntakeMachine, settings=settings(
            max_examples=60, stateful_step_count=20, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ))
