"""The operator console (``GET /admin``) in a real headless Chromium against a real ``fulfiller serve``.

One ``fulfiller serve`` (receiver + workers) and one platform double (upload
URL + wait-token callbacks) serve the whole module; jobs of every kind are made
by sending signed events, then driven from the page: sign in, read the list,
filter, page, open a job, rerun it, skip it, see a refusal, lose the token.

Screenshots of the jobs page and a job page at laptop (1366x900) and phone
(390x844) widths land in ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import base64
import hashlib
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


def login(page: Any, console: Console, hash_: str = "") -> None:
    page.goto(console.url + hash_)
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


def test_admin_answers_seen_by_the_console_carry_no_credentials(console: Console) -> None:
    # Every answer the console reads, after real uploads, 400/409 callbacks, reruns and skips.
    jobs = console.proc.jobs()
    assert len(jobs) >= 12
    texts = [console.proc.admin("GET", "/admin/jobs", params={"limit": 500}).text]
    texts += [console.proc.admin("GET", f"/admin/jobs/{j['id']}").text for j in jobs]
    blob = "\n".join(texts)
    assert "?REDACTED" in blob
    assert SECRET not in blob and ADMIN_TOKEN not in blob
    for signature in console.signatures:
        assert signature not in blob, "an upload URL's signature leaked into an admin answer"
    for token in console.tokens.values():
        assert token not in blob, "a callback token leaked into an admin answer"
