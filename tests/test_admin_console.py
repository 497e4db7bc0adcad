"""The operator console (``GET /admin``) in a real headless Chromium against a real ``fulfiller serve``.

One ``fulfiller serve`` (receiver + workers) and one platform double (upload
URL + wait-token callbacks) serve the whole module; jobs of every kind are made
by sending signed events, then driven from the page: sign in, read the list,
filter, page, open a job, rerun it, skip it, see a refusal, lose the token.
Deliveries are refused the ways operators meet them (a secret copied without
its prefix, a re-serialised body, a renamed signature header, a body too
large) and read back on the "Refused deliveries" page.

Screenshots of the jobs page, a job page and the refused deliveries at laptop
(1366x900) and phone (390x844) widths land in ``test-artifacts/`` for people
to look at.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from fulfiller.ops.testevent import signed_headers
from support.fulfiller_proc import FulfillerProcess
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
MEDIA = Path(__file__).resolve().parent / "media"
ADMIN_TOKEN = "console-admin-token-7f3a9c"
SECRET = "whsec_console-tests-0f9e8d7c"
XSS_CODE = '<img src=x onerror="window.__xss=1">"><script>window.__xss=2</script>'
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
UI_TIMEOUT_MS = 20_000
MAX_BODY = 65_536
# A header name made of the token characters HTTP allows and markup would read as entities; "sig" in it makes the
# doctor name it in its advice too. (A name with < or > never reaches the app: the HTTP parser answers 400.)
HOSTILE_HEADER = "x-&lt&amp'!#$%*+^|~-sig"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


pytestmark = pytest.mark.skipif(_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")


def _html() -> str:
    return files("fulfiller.ops").joinpath("static/admin.html").read_text()


def test_console_script_matches_its_content_security_policy() -> None:
    # The page only runs the one inline script whose hash its CSP names: injected markup cannot run script
    # even if an escaping bug slipped in. Editing the script means updating the hash; this says to what.
    html = _html()
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1, "the console keeps all of its code in one inline <script>"
    digest = "sha256-" + base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    assert csp, "the console declares a Content-Security-Policy"
    assert f"script-src '{digest}'" in csp.group(1), f"update the CSP's script-src to '{digest}'"
    assert "default-src 'none'" in csp.group(1)
    assert "connect-src 'self'" in csp.group(1)
    # No way for job data to become markup: the page never assigns HTML.
    assert "innerHTML" not in html and "outerHTML" not in html and "insertAdjacentHTML" not in html
    assert "document.write" not in html and "eval(" not in html
    # Nothing loaded from elsewhere (no CDN), no build step.
    assert not re.search(r"""(src|href)=["']https?:""", html)


# ------------------------------------------------------------------------------------------------
# the environment: platform double + fulfiller serve + jobs of every status


@dataclass
class Console:
    proc: FulfillerProcess
    platform: PlatformDouble
    url: str
    jobs: dict[str, str] = field(default_factory=dict)  # name -> job id
    tokens: dict[str, str] = field(default_factory=dict)  # name -> waitpoint token
    signatures: list[str] = field(default_factory=list)  # X-Amz-Signature values of the upload URLs sent

    def request(self, name: str, code: str, *, aspect: str | None = "9x16", family: str | None = None,
                statuses: list[int] | None = None, expires_at: float | None = None) -> dict[str, Any]:
        token = new_token()
        self.tokens[name] = token
        if statuses:
            self.platform.script_callbacks(token, statuses)
        key = storage_key(code, aspect or family or "")
        upload_url = self.platform.presign(key)
        self.signatures.append(parse_qs(urlsplit(upload_url).query)["X-Amz-Signature"][0])
        return source_requested(code, aspect=aspect, family=family, key=key, expires_at=expires_at,
                                upload_url=upload_url, callback_url=self.platform.callback_url(token))

    def deliver(self, name: str, body: dict[str, Any]) -> str:
        self.jobs[name] = self.proc.deliver(body)
        return self.jobs[name]

    def wait(self, name: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        return self.proc.wait_for_job(self.jobs[name], statuses, timeout=timeout)


def _master(root: Path, code: str, aspect: str, sample: str | None = None) -> None:
    folder = root / code / "v1" / "en"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MEDIA / (sample or f"{aspect}.mp4"), folder / f"{aspect}.mp4")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    masters = root / "masters"
    for code in ("HRT-1212", "HRT-1400", "HRT-1600", "HRT-2000", "HRT-2100", "HRT-3000", "HRT-3100"):
        _master(masters, code, "9x16")
    _master(masters, "HRT-1300", "4x5")
    config = {
        "worker": {
            "concurrency": 4, "allow_insecure_http": True,
            "allowed_upload_hosts": ["127.0.0.1"], "allowed_callback_hosts": ["127.0.0.1"],
            "poll_interval_s": 0.1, "retry_base_s": 0.05, "retry_max_s": 0.2, "http_timeout_s": 10,
        },
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
        "receiver": {"max_body_bytes": MAX_BODY},
    }
    with run_platform(root / "platform") as platform, \
            FulfillerProcess(root / "serve", config, secret=SECRET, admin_token=ADMIN_TOKEN) as proc:
        c = Console(proc, platform, f"{proc.base_url}/admin")
        now = time.time()
        c.deliver("fulfilled", c.request("fulfilled", "HRT-1212"))
        c.deliver("afs", c.request("afs", "HRT-1300", aspect=None, family="feed"))
        c.deliver("skipped", c.request("skipped", "HRT-404"))
        c.deliver("xss", c.request("xss", XSS_CODE))
        c.deliver("superseded", c.request("superseded", "HRT-1400", statuses=[409]))
        c.deliver("expired", c.request("expired", "HRT-1500", expires_at=now - 120))
        invalid = c.request("invalid", "HRT-1700")
        del invalid["creative"]["kind"]
        c.deliver("invalid", invalid)
        c.deliver("rejected", c.request("rejected", "HRT-1600"))
        c.deliver("rerun", c.request("rerun", "HRT-2000", statuses=[400]))
        c.deliver("failed", c.request("failed", "HRT-2100", statuses=[400]))
        c.deliver("skip", c.request("skip", "HRT-3000", statuses=[400]))
        c.deliver("skip409", c.request("skip409", "HRT-3100", statuses=[400]))

        c.wait("fulfilled", "completed")
        fulfilled_key = storage_key("HRT-1212", "9x16")
        assert c.proc.send_event({"storageKey": fulfilled_key, "projectId": "p"},
                                 topic="video.source_fulfilled").status_code == 202
        c.wait("rejected", "completed")
        assert c.proc.send_event({"storageKey": storage_key("HRT-1600", "9x16"),
                                  "reason": "aspect_mismatch: delivered 9x16, measured 1x1"},
                                 topic="video.source_rejected").status_code == 202
        expected = {"fulfilled": "fulfilled", "afs": "completed", "skipped": "skipped", "xss": "skipped",
                    "superseded": "superseded", "expired": "expired", "invalid": "invalid", "rejected": "rejected",
                    "rerun": "failed", "failed": "failed", "skip": "failed", "skip409": "failed"}
        for name, status in expected.items():
            assert c.wait(name, status)["status"] == status, name
        yield c


# One case per way operators meet a refusal; each delivery carries a header named after its case (the refusal log
# keeps header names, never values), which finds its row however many other refusals the server holds.
UNPREFIXED = "x-case-unprefixed-secret"
REENCODED = "x-case-reencoded-body"
RENAMED = "x-case-renamed-header"
OVERSIZE = "x-case-oversize-body"
UNKNOWN_KEY = "x-case-unknown-key"
BODY_MARKER = "REFUSED-BODY-7d2c41"


@dataclass
class Refused:
    """Deliveries sent to ``fulfiller serve`` to be refused, and every value of theirs that must never be shown."""

    url: str
    http: Any
    hidden: list[str] = field(default_factory=lambda: [SECRET, SECRET.removeprefix("whsec_"), BODY_MARKER])

    def signed(self, body: bytes, case: str, secret: str = SECRET) -> dict[str, str]:
        event_id = f"evt_{case.replace('-', '_')}_{len(self.hidden)}"
        headers = {**signed_headers(body, [secret], topic="video.source_requested", event_id=event_id), case: "1"}
        self.hidden += [event_id, headers["x-outpost-signature"]]
        return headers

    def post(self, body: bytes, headers: dict[str, str], status: int) -> dict[str, Any]:
        r = self.http.post(self.url, content=body, headers=headers)
        assert r.status_code == status, r.text
        return r.json()


@pytest.fixture(scope="module")
def refused(console: Console) -> Refused:
    sent = Refused(f"{console.proc.base_url}/webhooks/outpost", console.proc.http)
    event = console.request("refused", BODY_MARKER)
    raw = json.dumps(event).encode()
    # the secret pasted without its whsec_ prefix: the sender hears only bad_signature
    answer = sent.post(raw, sent.signed(raw, UNPREFIXED, SECRET.removeprefix("whsec_")), 401)
    assert answer == {"error": "signature refused", "reason": "bad_signature"}
    # a proxy pretty-printed the JSON it passed on
    sent.post(json.dumps(event, indent=2).encode(), sent.signed(raw, REENCODED), 401)
    # the signature under another header name, next to a sig-like header whose name reads as markup entities
    renamed = sent.signed(raw, RENAMED)
    renamed["x-acme-signature"] = renamed.pop("x-outpost-signature")
    renamed[HOSTILE_HEADER] = "1"
    assert sent.post(raw, renamed, 401)["reason"] == "no_signature_header"
    # over receiver.max_body_bytes: refused before any signature check, so never diagnosed
    sent.post(b"x" * 70_000, {"content-type": "application/json", OVERSIZE: "1"}, 413)
    return sent


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=DESKTOP)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield p
    finally:
        context.close()
    # 401/404/409 answers the tests provoke show up as failed resource loads; anything else is a bug in the page.
    unexpected = [e for e in errors if not e.startswith("Failed to load resource: the server responded")]
    assert not unexpected, f"the console logged errors: {unexpected}"


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def login(page: Any, console: Console | str, hash_: str = "") -> None:
    page.goto((console if isinstance(console, str) else console.url) + hash_)
    page.get_by_test_id("token-input").fill(ADMIN_TOKEN)
    page.get_by_test_id("login-submit").click()
    _expect()(page.get_by_test_id("login-view")).to_be_hidden()


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'tr[data-job-id="{job_id}"]')


def no_horizontal_scroll(page: Any) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: content {widths[0]}px wide in a {widths[1]}px window"


def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.mouse.move(0, 0)  # no hover highlight left over from the last click
    page.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


# ------------------------------------------------------------------------------------------------
# the browser tests


def test_the_page_itself_needs_no_token_and_holds_no_data(console: Console) -> None:
    r = console.proc.http.get(console.url)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers.get("cache-control") == "no-store"
    assert ADMIN_TOKEN not in r.text and "fb-external/" not in r.text
    assert not re.search(r"job_[0-9a-f]{32}", r.text)
    assert not any(code in r.text for code in ("HRT-2000", "HRT-1300", "HRT-404"))


def test_sign_in_list_statuses_and_escaping(page: Any, console: Console) -> None:
    expect = _expect()
    page.goto(console.url)
    expect(page.get_by_test_id("login-view")).to_be_visible()
    expect(page.get_by_test_id("list-view")).to_be_hidden()

    page.get_by_test_id("token-input").fill("not-the-token")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("refused")
    assert page.evaluate("() => sessionStorage.length") == 0

    page.get_by_test_id("token-input").fill(ADMIN_TOKEN)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("list-view")).to_be_visible()
    for name in ("fulfilled", "afs", "skipped", "superseded", "expired", "invalid", "rejected", "failed"):
        expect(row(page, console.jobs[name])).to_be_visible()
    statuses = {row(page, console.jobs[n]).get_attribute("data-status") for n in
                ("fulfilled", "afs", "skipped", "superseded", "expired", "invalid", "rejected", "failed")}
    assert statuses == {"fulfilled", "completed", "skipped", "superseded", "expired", "invalid", "rejected", "failed"}

    # badges carry their status' colour family
    def tone(name: str) -> str:
        return row(page, console.jobs[name]).get_by_test_id("status-badge").get_attribute("class") or ""

    assert "tone-ok" in tone("fulfilled") and "tone-ok" in tone("afs")
    assert "tone-muted" in tone("skipped") and "tone-info" in tone("superseded")
    assert all("tone-bad" in tone(n) for n in ("failed", "invalid", "rejected"))
    assert "tone-warn" in tone("expired")

    # the reason is in the row; the AFS row shows the aspect chosen
    expect(row(page, console.jobs["failed"])).to_contain_text("callback answered 400")
    expect(row(page, console.jobs["afs"])).to_contain_text("4x5")

    # a creative code full of markup is shown as text and runs nothing
    xss = row(page, console.jobs["xss"])
    expect(xss.get_by_test_id("job-link")).to_have_text(XSS_CODE)
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("#jobs-body img, #jobs-body script").count() == 0

    # the token is kept for this tab only, and never in the URL
    assert page.evaluate("() => sessionStorage.getItem('fulfiller.admin.token')") == ADMIN_TOKEN
    assert ADMIN_TOKEN not in page.url
    no_horizontal_scroll(page)
    shot(page, "jobs-desktop.png")

    # opening the XSS job renders its code as text on the job page too
    xss.get_by_test_id("job-link").click()
    expect(page.get_by_test_id("job-title")).to_have_text(XSS_CODE)
    assert page.evaluate("() => window.__xss") is None


def test_filters_and_paging(page: Any, console: Console) -> None:
    expect = _expect()
    # 27 jobs with one code prefix, more than a page of 25 (invalid payloads: no worker time needed)
    for i in range(27):
        body = console.request(f"page{i}", f"PAGE-{i:02d}")
        del body["creative"]["kind"]
        console.deliver(f"page{i}", body)
    login(page, console)

    page.get_by_test_id("status-filter").select_option("failed")
    expect(page.locator("tr.job-row[data-status]:not([data-status='failed'])")).to_have_count(0)
    expect(row(page, console.jobs["failed"])).to_be_visible()
    assert "status=failed" in page.url

    page.get_by_test_id("status-filter").select_option("")
    page.get_by_test_id("code-filter").fill("hrt-14")  # substring, case blind
    expect(page.locator("tr.job-row")).to_have_count(1)
    expect(row(page, console.jobs["superseded"])).to_be_visible()

    page.get_by_test_id("code-filter").fill("PAGE-")
    page.get_by_test_id("limit-select").select_option("25")
    expect(page.locator("tr.job-row")).to_have_count(25)
    expect(page.get_by_test_id("page-info")).to_have_text("Jobs 1–25")
    expect(page.get_by_test_id("prev-page")).to_be_disabled()
    page.get_by_test_id("next-page").click()
    expect(page.locator("tr.job-row")).to_have_count(2)
    expect(page.get_by_test_id("page-info")).to_have_text("Jobs 26–27")
    expect(page.get_by_test_id("next-page")).to_be_disabled()
    # newest first: the last page holds the first two sent
    expect(row(page, console.jobs["page0"])).to_be_visible()
    expect(row(page, console.jobs["page1"])).to_be_visible()

    # filters survive opening a job and coming back, and the auto-refresh
    row(page, console.jobs["page0"]).get_by_test_id("job-link").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "invalid")
    expect(page.get_by_test_id("job-error")).to_contain_text("creative.kind")
    page.get_by_test_id("back-link").click()
    expect(page.get_by_test_id("code-filter")).to_have_value("PAGE-")
    expect(page.get_by_test_id("page-info")).to_have_text("Jobs 26–27")
    # the list refreshes itself: a new job shifts this page, and the filters stay as they were
    body = console.request("page27", "PAGE-27")
    del body["creative"]["kind"]
    console.deliver("page27", body)
    expect(page.locator("tr.job-row")).to_have_count(3, timeout=UI_TIMEOUT_MS)
    expect(page.get_by_test_id("page-info")).to_have_text("Jobs 26–28")
    expect(page.get_by_test_id("code-filter")).to_have_value("PAGE-")

    page.get_by_test_id("clear-filters").click()
    expect(page.get_by_test_id("code-filter")).to_have_value("")
    expect(page.locator("tr.job-row")).to_have_count(25)
    expect(page.get_by_test_id("page-info")).to_have_text("Jobs 1–25")


def test_rerun_a_failed_job_until_it_completes(page: Any, console: Console) -> None:
    expect = _expect()
    job_id = console.jobs["rerun"]
    login(page, console)
    row(page, job_id).click()  # the whole row opens the job
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "failed")
    assert page.url.endswith(f"#/jobs/{job_id}")

    # the failure is up front, the request is spelled out, the attempts are a timeline
    expect(page.get_by_test_id("job-error")).to_contain_text("callback answered 400")
    expect(page.get_by_test_id("request-kind")).to_contain_text("OSS")
    expect(page.get_by_test_id("aspect-asked")).to_have_text("9x16")
    expect(page.get_by_test_id("aspect-chosen")).to_have_text("9x16")
    expect(page.get_by_test_id("storage-key")).to_contain_text(storage_key("HRT-2000", "9x16"))
    expect(page.get_by_test_id("expires")).to_contain_text(re.compile(r"\(in \d+ min\)"))
    expect(page.get_by_test_id("source")).to_have_text("local:HRT-2000/v1/en/9x16.mp4")
    expect(page.get_by_test_id("content-type")).to_contain_text("video/mp4")
    expect(page.get_by_test_id("measured")).to_have_text(re.compile(r"180×320\s*aspect 9x16"))
    size = (MEDIA / "9x16.mp4").stat().st_size
    expect(page.get_by_test_id("bytes")).to_contain_text(f"{size:,} bytes")
    expect(page.get_by_test_id("content-hash")).to_contain_text("sha256:")
    steps = page.get_by_test_id("attempt")
    expect(steps).to_have_count(3)
    assert [steps.nth(i).get_attribute("data-step") for i in range(3)] == ["resolve", "upload", "callback"]
    expect(steps.nth(1)).to_contain_text("HTTP 200")
    expect(steps.nth(2)).to_contain_text("HTTP 400")
    assert steps.nth(2).get_attribute("data-outcome") == "bad"
    # credentials stay redacted on the page
    upload = page.get_by_test_id("upload-url")
    expect(upload).to_contain_text(f"{console.platform.base_url}/r2/fb-external/REDACTED/")
    expect(upload).not_to_contain_text("X-Amz-")  # the whole query is hidden
    expect(page.get_by_test_id("callback-url")).to_contain_text("/callbacks/tokens/REDACTED/REDACTED")
    text = page.locator("body").inner_text()
    assert console.tokens["rerun"] not in text
    assert not any(sig in text for sig in console.signatures)
    no_horizontal_scroll(page)
    shot(page, "job-failed-desktop.png")

    # cancelling changes nothing
    page.get_by_test_id("rerun-button").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
    page.get_by_test_id("confirm-cancel").click()
    expect(page.get_by_test_id("confirm-dialog")).to_be_hidden()
    assert console.proc.job(job_id)["status"] == "failed"

    page.get_by_test_id("rerun-button").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Rerun HRT-2000?")
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("action-result")).to_contain_text("Rerun queued (202)")
    # the page follows the job by itself: no reload
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "completed", timeout=UI_TIMEOUT_MS)
    expect(page.get_by_test_id("job-error")).to_have_count(0)
    expect(page.get_by_test_id("job-success")).to_be_visible()
    expect(page.get_by_test_id("attempt")).to_have_count(6)
    expect(page.get_by_test_id("runs")).to_have_text("2")
    assert [c.status for c in console.platform.callbacks(console.tokens["rerun"])] == [400, 202]
    # once the job has run and settled, the "queued" note makes way for the outcome
    expect(page.get_by_test_id("action-result")).to_be_hidden(timeout=UI_TIMEOUT_MS)
    no_horizontal_scroll(page)
    shot(page, "job-desktop.png")

    page.set_viewport_size(PHONE)
    no_horizontal_scroll(page)
    shot(page, "job-phone.png")


def test_skip_a_failed_job_with_a_reason(page: Any, console: Console) -> None:
    expect = _expect()
    job_id = console.jobs["skip"]
    login(page, console, f"#/jobs/{job_id}")  # deep link: the hash route survives the sign-in
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "failed")

    page.get_by_test_id("skip-button").click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_contain_text("negative-ack")
    page.get_by_test_id("confirm-ok").click()  # no reason yet: refused by the form, not sent
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("skip-reason-error")).to_be_visible()
    page.get_by_test_id("skip-reason").fill("master withdrawn by the brand <b>team</b>")
    expect(page.get_by_test_id("skip-reason-error")).to_be_hidden()
    shot(page, "skip-dialog-desktop.png", full_page=False)
    page.get_by_test_id("confirm-ok").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("action-result")).to_contain_text("Skip queued (202)")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "skipped", timeout=UI_TIMEOUT_MS)
    expect(page.get_by_test_id("job-skip-reason")).to_contain_text("master withdrawn by the brand <b>team</b>")
    last = console.platform.callbacks(console.tokens["skip"])[-1]
    assert last.body == {"skip": True, "reason": "master withdrawn by the brand <b>team</b>"}
    expect(page.get_by_test_id("attempt").last).to_contain_text("skip")


def test_a_refused_rerun_shows_the_servers_reason(page: Any, console: Console) -> None:
    expect = _expect()
    login(page, console, f"#/jobs/{console.jobs['expired']}")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "expired")
    expect(page.get_by_test_id("job-error")).to_contain_text("deadline")
    expect(page.get_by_test_id("action-hint")).to_contain_text("deadline passed")
    expect(page.get_by_test_id("expires")).to_contain_text("passed")
    page.get_by_test_id("rerun-button").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("deadline passed")
    page.get_by_test_id("confirm-ok").click()
    result = page.get_by_test_id("action-result")
    expect(result).to_contain_text("Refused (409)")
    expect(result).to_contain_text("deadline (expiresAt) has passed")
    assert result.get_attribute("data-kind") == "bad"
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "expired")
    # the answer stays up through the next auto-refresh
    job_url = f"/admin/jobs/{console.jobs['expired']}"
    with page.expect_response(lambda r: r.url.endswith(job_url) and r.request.method == "GET", timeout=UI_TIMEOUT_MS):
        pass
    expect(result).to_contain_text("Refused (409)")

    # an invalid payload: the server's refusal, word for word
    page.goto(f"{console.url}#/jobs/{console.jobs['invalid']}")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "invalid")
    page.get_by_test_id("rerun-button").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("action-result")).to_contain_text("an invalid payload cannot be rerun")


def test_an_afs_job_page_shows_the_family_and_the_choice(page: Any, console: Console) -> None:
    expect = _expect()
    login(page, console, f"#/jobs/{console.jobs['afs']}")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "completed")
    expect(page.get_by_test_id("request-kind")).to_contain_text("AFS")
    expect(page.get_by_test_id("family")).to_have_text("feed")
    accepted = page.get_by_test_id("accepted-aspects").locator(".chip")
    expect(accepted).to_have_text(["1x1", "3x4", "4x5"])
    expect(page.get_by_test_id("accepted-aspects").locator(".chip.on")).to_have_text("4x5")
    expect(page.get_by_test_id("aspect-chosen")).to_have_text("4x5")
    # the request is answered: only a rerun is offered, not a skip
    expect(page.get_by_test_id("rerun-button")).to_be_visible()
    expect(page.get_by_test_id("skip-button")).to_have_count(0)

    page.goto(f"{console.url}#/jobs/{console.jobs['rejected']}")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "rejected")
    expect(page.get_by_test_id("job-lifecycle-reason")).to_contain_text("aspect_mismatch")

    page.goto(f"{console.url}#/jobs/job_does_not_exist")
    expect(page.get_by_test_id("job-missing")).to_contain_text("No such job")


def test_a_refused_token_returns_to_the_prompt(page: Any, console: Console) -> None:
    expect = _expect()
    login(page, console, f"#/jobs/{console.jobs['fulfilled']}")
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "fulfilled")
    # the token is rotated under the operator's feet
    page.evaluate("() => sessionStorage.setItem('fulfiller.admin.token', 'rotated-away')")
    page.get_by_test_id("refresh-button").click()
    expect(page.get_by_test_id("login-view")).to_be_visible()
    expect(page.get_by_test_id("login-error")).to_contain_text("401")
    expect(page.get_by_test_id("job-view")).to_be_hidden()
    assert page.evaluate("() => sessionStorage.getItem('fulfiller.admin.token')") is None
    # signing in again lands back where the operator was
    page.get_by_test_id("token-input").fill(ADMIN_TOKEN)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "fulfilled")

    page.get_by_test_id("signout-button").click()
    expect(page.get_by_test_id("login-view")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_phone_width_turns_the_table_into_cards(browser: Any, console: Console) -> None:
    expect = _expect()
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        login(page, console, "#/jobs?code=HRT-")
        first = row(page, console.jobs["failed"])
        expect(first).to_be_visible()
        assert page.locator("#jobs-table thead").is_hidden()
        assert first.evaluate("el => getComputedStyle(el).display") == "flex"
        no_horizontal_scroll(page)
        shot(page, "jobs-phone.png")

        first.click()
        expect(page.get_by_test_id("job-status")).to_have_attribute("data-status", "failed")
        no_horizontal_scroll(page)
        shot(page, "job-failed-phone.png")

        page.goto(f"{console.url}#/jobs/{console.jobs['xss']}")
        expect(page.get_by_test_id("job-title")).to_have_text(XSS_CODE)
        no_horizontal_scroll(page)
    finally:
        context.close()


def test_dark_colour_scheme(browser: Any, console: Console) -> None:
    # Operators on a dark desktop get a dark console, with the same status colours.
    context = browser.new_context(viewport=DESKTOP, color_scheme="dark")
    page = context.new_page()
    try:
        login(page, console, "#/jobs?code=HRT-")
        _expect()(row(page, console.jobs["failed"])).to_be_visible()
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 19, 25)"
        shot(page, "jobs-desktop-dark.png")
    finally:
        context.close()


def refusal_row(page: Any, case: str) -> Any:
    return page.get_by_test_id("refusal-row").filter(has_text=case)


def open_detail(page: Any, case: str) -> Any:
    """Expand a refusal's row (unless it is open) and answer its detail block."""
    toggle = refusal_row(page, case).get_by_test_id("refusal-toggle")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    _expect()(toggle).to_have_attribute("aria-expanded", "true")
    return page.locator(f"#{toggle.get_attribute('aria-controls')}")


def test_refused_deliveries_show_the_doctors_reason_and_the_fix(page: Any, console: Console,
                                                                   refused: Refused) -> None:
    expect = _expect()
    login(page, console, "#/refusals")  # deep link: the route survives the sign-in
    expect(page.get_by_test_id("refusals-view")).to_be_visible()
    expect(page.get_by_test_id("list-view")).to_be_hidden()
    expect(page.get_by_test_id("nav-refusals")).to_have_attribute("aria-current", "page")
    assert page.get_by_test_id("nav-jobs").get_attribute("aria-current") is None
    assert page.title().startswith("Refused deliveries")
    note = page.get_by_test_id("refusals-note")
    expect(note).to_contain_text("memory only: the last 100 since it started")

    # what the sender was told, and what the doctor found
    told_and_found = {UNPREFIXED: ("bad_signature", "secret_variant"), REENCODED: ("bad_signature", "body_modified"),
                      RENAMED: ("no_signature_header", "no_signature_header"), OVERSIZE: ("too_large", "too_large")}
    for case, (answered, reason) in told_and_found.items():
        found = refusal_row(page, case)
        expect(found).to_have_count(1)
        expect(found.get_by_test_id("refusal-answered")).to_have_text(answered)
        expect(found.get_by_test_id("reason-badge")).to_have_text(reason)
        assert found.get_attribute("data-reason") == reason
    # newest first
    listed = page.get_by_test_id("refusal-header-list").all_text_contents()
    places = [next(i for i, names in enumerate(listed) if case in names) for case in (OVERSIZE, RENAMED, REENCODED,
                                                                                        UNPREFIXED)]
    assert places == sorted(places)
    # the first advice line is in the row; the 401 and the body size too
    unprefixed = refusal_row(page, UNPREFIXED)
    expect(unprefixed.get_by_test_id("refusal-summary")).to_contain_text("receiver.secrets[0]")
    expect(unprefixed).to_contain_text("HTTP 401")
    expect(unprefixed.get_by_test_id("undiagnosed")).to_have_count(0)
    # a refusal the doctor never looked at says so, and why
    oversize = refusal_row(page, OVERSIZE)
    assert oversize.get_attribute("data-diagnosed") == "false"
    expect(oversize.get_by_test_id("undiagnosed")).to_be_visible()
    expect(oversize.get_by_test_id("refusal-summary")).to_contain_text("not a signature refusal")
    expect(oversize).to_contain_text("HTTP 413")
    expect(oversize.locator("td.c-size")).to_have_text("70.0 kB")

    # the detail: every code and every advice line, in plain words (the button, the keyboard, the row itself)
    detail = open_detail(page, UNPREFIXED)
    expect(detail.get_by_test_id("refusal-diagnosis")).to_contain_text("secret_variant")
    expect(detail.get_by_test_id("refusal-diagnosis")).to_contain_text("fix the secret's spelling")
    expect(detail.get_by_test_id("refusal-advice")).to_contain_text("without its whsec_ prefix")
    expect(detail.get_by_test_id("refusal-told")).to_contain_text("HTTP 401")
    expect(detail.get_by_test_id("refusal-told")).to_contain_text("bad_signature")
    expect(detail.get_by_test_id("refusal-received")).to_contain_text("/webhooks/outpost from 127.0.0.1")

    refusal_row(page, REENCODED).get_by_test_id("refusal-toggle").focus()
    page.keyboard.press("Enter")
    reencoded = open_detail(page, REENCODED)
    expect(reencoded.get_by_test_id("refusal-advice")).to_contain_text("re-encoded the body")

    refusal_row(page, RENAMED).locator("td.c-client").click()
    renamed = open_detail(page, RENAMED)
    advice = renamed.get_by_test_id("refusal-advice")
    expect(advice).to_contain_text("no x-outpost-signature header")
    expect(advice).to_contain_text("set receiver.signature_header: x-acme-signature")
    # names the sender chose are text: entities stay as typed, no element comes of them
    expect(advice).to_contain_text(HOSTILE_HEADER)
    expect(renamed.get_by_test_id("refusal-headers").locator(".chip", has_text="x-&lt")).to_have_text(HOSTILE_HEADER)
    expect(refusal_row(page, RENAMED).get_by_test_id("refusal-header-list")).to_contain_text(HOSTILE_HEADER)
    assert page.locator("#refusals-body img, #refusals-body script").count() == 0

    undiagnosed = open_detail(page, OVERSIZE)
    expect(undiagnosed.get_by_test_id("refusal-undiagnosed")).to_contain_text("not a signature refusal")
    expect(undiagnosed.get_by_test_id("refusal-undiagnosed")).to_contain_text("max_body_bytes")
    expect(undiagnosed.get_by_test_id("refusal-advice")).to_have_count(0)
    expect(undiagnosed.get_by_test_id("refusal-body-size")).to_contain_text("70,000 bytes")
    open_detail(page, OVERSIZE)  # already open: stays open
    refusal_row(page, OVERSIZE).get_by_test_id("refusal-toggle").click()
    expect(undiagnosed).to_be_hidden()

    # no secret, signature, event id or body ever reaches the page
    dom = page.content()
    for value in refused.hidden:
        assert value not in dom, f"{value[:16]}… reached the page"
    no_horizontal_scroll(page)
    shot(page, "refusals-desktop.png")

    # the top bar leads to the jobs and back, by mouse and by keyboard
    page.get_by_test_id("nav-jobs").click()
    expect(page.get_by_test_id("list-view")).to_be_visible()
    expect(page.get_by_test_id("refusals-view")).to_be_hidden()
    expect(page.get_by_test_id("nav-jobs")).to_have_attribute("aria-current", "page")
    assert page.url.endswith("#/jobs")
    page.get_by_test_id("nav-refusals").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("refusals-view")).to_be_visible()
    expect(page.get_by_test_id("nav-refusals")).to_have_attribute("aria-current", "page")
    assert page.get_by_test_id("nav-jobs").get_attribute("aria-current") is None
    assert page.url.endswith("#/refusals")

    # live: a new refusal shows up by itself, and the open rows and the focus stay where they were
    refusal_row(page, UNPREFIXED).get_by_test_id("refusal-toggle").focus()
    raw = json.dumps(console.request("unknown-key", BODY_MARKER)).encode()
    refused.post(raw, refused.signed(raw, UNKNOWN_KEY, "whsec_nobody-here-configured-this"), 401)
    expect(refusal_row(page, UNKNOWN_KEY).get_by_test_id("reason-badge")).to_have_text("wrong_secret",
                                                                                       timeout=UI_TIMEOUT_MS)
    expect(open_detail(page, UNPREFIXED)).to_be_visible()
    expect(refusal_row(page, UNPREFIXED).get_by_test_id("refusal-toggle")).to_be_focused()
    expect(refusal_row(page, RENAMED).get_by_test_id("refusal-toggle")).to_have_attribute("aria-expanded", "true")
    expect(refusal_row(page, OVERSIZE).get_by_test_id("refusal-toggle")).to_have_attribute("aria-expanded", "false")
    dom = page.content()
    assert not [value for value in refused.hidden if value in dom]


def test_refused_deliveries_at_phone_width(browser: Any, console: Console, refused: Refused) -> None:
    expect = _expect()
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        login(page, console)
        # the sections are tabs under the top bar, inside the screen
        nav = page.get_by_test_id("nav-refusals")
        box = nav.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        nav.click()
        first = refusal_row(page, UNPREFIXED)
        expect(first).to_be_visible()
        assert page.locator("#refusals-table thead").is_hidden()
        assert first.evaluate("el => getComputedStyle(el).display") == "flex"
        expect(open_detail(page, RENAMED).get_by_test_id("refusal-advice")).to_contain_text("x-acme-signature")
        open_detail(page, OVERSIZE)
        no_horizontal_scroll(page)
        shot(page, "refusals-phone.png")
    finally:
        context.close()


def test_no_refusals_yet_then_one_arrives(page: Any, tmp_path: Path) -> None:
    # A server of its own: the module's one holds refusals by now.
    expect = _expect()
    (tmp_path / "masters").mkdir()
    config = {"catalogs": {"local": {"type": "local", "root": str(tmp_path / "masters")}},
              "routes": [{"codes": ["*"], "catalog": "local"}]}
    with FulfillerProcess(tmp_path / "serve", config, secret=SECRET, admin_token=ADMIN_TOKEN) as proc:
        login(page, f"{proc.base_url}/admin", "#/refusals")
        empty = page.get_by_test_id("refusals-empty")
        expect(empty).to_contain_text("No refused deliveries since this process started")
        expect(empty).to_contain_text("shows up here with the reason and the fix")
        expect(page.get_by_test_id("refusals-table")).to_be_hidden()
        expect(page.get_by_test_id("refusals-summary")).to_have_text("Newest first")
        expect(page.get_by_test_id("refusals-note")).to_contain_text("the last 100")
        no_horizontal_scroll(page)
        shot(page, "refusals-empty-desktop.png")

        sent = Refused(f"{proc.base_url}/webhooks/outpost", proc.http)
        assert sent.post(b'{"a": 1}', {"content-type": "application/json", "x-case-first": "1"}, 401) == {
            "error": "signature refused", "reason": "no_signature_header"}
        found = refusal_row(page, "x-case-first")
        expect(found.get_by_test_id("reason-badge")).to_have_text("no_signature_header", timeout=UI_TIMEOUT_MS)
        expect(empty).to_be_hidden()
        expect(page.get_by_test_id("refusals-summary")).to_have_text("1 refusal · newest first · no_signature_header 1")
        expect(open_detail(page, "x-case-first").get_by_test_id("refusal-advice")).to_contain_text(
            "no signature-like header")


def test_admin_answers_seen_by_the_console_carry_no_credentials(console: Console, refused: Refused) -> None:
    # Every answer the console reads, after real uploads, 400/409 callbacks, reruns, skips and refusals.
    jobs = console.proc.jobs()
    assert len(jobs) >= 12
    texts = [console.proc.admin("GET", "/admin/jobs", params={"limit": 500}).text]
    texts += [console.proc.admin("GET", f"/admin/jobs/{j['id']}").text for j in jobs]
    refusals = console.proc.admin("GET", "/admin/refusals").text
    assert "secret_variant" in refusals
    for value in refused.hidden:
        assert value not in refusals, f"{value[:16]}… leaked into /admin/refusals"
    blob = "\n".join([*texts, refusals])
    assert "?REDACTED" in blob
    assert SECRET not in blob and ADMIN_TOKEN not in blob
    for signature in console.signatures:
        assert signature not in blob, "an upload URL's signature leaked into an admin answer"
    for token in console.tokens.values():
        assert token not in blob, "a callback token leaked into an admin answer"
