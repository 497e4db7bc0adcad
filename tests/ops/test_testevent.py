"""``fulfiller send-test-event`` (a subprocess) against ``fulfiller serve`` (a subprocess).

The operator's proof of a deployment: the sample event, signed as Outpost signs
it, is accepted and becomes a completed job; the master in a local catalog is
uploaded to the platform double and the callback completes the wait token. Both
signing modes (Outpost's default, with and without a timestamp, and Standard
Webhooks with a ``whsec_`` secret); a wrong secret exits 1 and shows the 401.
With ``--config`` it signs as that receiver is configured; the secret may come
from ``--secret-env``; the creative flags shape the request the job is made of.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fulfiller.cli import build_parser
from fulfiller.config import parse_config
from fulfiller.intake.signing import Verifier
from fulfiller.ops.testevent import Signing, event_body, sample_event, signed_headers, signing
from support.fulfiller_proc import FulfillerProcess
from support.platform import PlatformDouble, new_token, run_platform
from support.servers import fulfiller_command

MEDIA = Path(__file__).resolve().parents[1] / "media"
OUTPOST_SECRET = "outpost-secret-" + secrets.token_hex(8)
STANDARD_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
TIMEOUT_S = 30


@dataclass
class Deployment:
    mode: str
    secret: str
    proc: FulfillerProcess
    platform: PlatformDouble

    @property
    def url(self) -> str:
        return f"{self.proc.base_url}/webhooks/outpost"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformDouble]:
    with run_platform(tmp_path_factory.mktemp("platform")) as double:
        yield double


@pytest.fixture(scope="module")
def masters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local catalog holding the master the sample event asks for (HRT-1212 v2 en 9x16 video)."""
    root = tmp_path_factory.mktemp("masters")
    creative = sample_event("https://u.invalid/", "https://c.invalid/")["creative"]
    folder = root / creative["code"] / f"v{creative['variation']}" / creative["locale"]
    folder.mkdir(parents=True)
    shutil.copyfile(MEDIA / "9x16.mp4", folder / f"{creative['aspectRatio']}.mp4")
    return root


@pytest.fixture(scope="module", params=["outpost", "standard"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               platform: PlatformDouble, masters: Path) -> Iterator[Deployment]:
    mode = request.param
    secret = OUTPOST_SECRET if mode == "outpost" else STANDARD_SECRET
    config = {
        "receiver": {"mode": mode, "secrets": [secret]},
        "worker": {"allow_insecure_http": True, "allowed_upload_hosts": ["127.0.0.1"],
                   "allowed_callback_hosts": ["127.0.0.1"]},
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    with FulfillerProcess(tmp_path_factory.mktemp(f"serve-{mode}"), config, secret=secret) as proc:
        yield Deployment(mode, secret, proc, platform)


def send_test_event(d: Deployment, *extra: str, secret: str | None = None, upload_url: str | None = None,
                    callback_url: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ["--url", d.url, "--secret", secret or d.secret, "--mode", d.mode, *extra]
    if upload_url:
        args += ["--upload-url", upload_url]
    if callback_url:
        args += ["--callback-url", callback_url]
    return send(*args)


def send(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fulfiller_command(), "send-test-event", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


def event_id_of(result: subprocess.CompletedProcess[str]) -> str:
    return re.search(r"\(event (\S+), topic video\.source_requested\)", result.stdout).group(1)


def test_sample_event_becomes_a_completed_job(deployment: Deployment) -> None:
    check_completed_run(deployment)


@pytest.mark.parametrize("deployment", ["outpost"], indirect=True)
def test_timestamped_outpost_signature(deployment: Deployment) -> None:
    """``t=<unix>,v0=<hex>``: Outpost's timestamped template (Standard Webhooks always carry one)."""
    check_completed_run(deployment, "--timestamped")


def check_completed_run(d: Deployment, *extra: str, signed_as_given: bool = True) -> None:
    key = f"send-test-event/{uuid.uuid4().hex}"
    token = new_token()
    urls = {"upload_url": d.platform.presign(key), "callback_url": d.platform.callback_url(token)}
    if signed_as_given:
        result = send_test_event(d, *extra, **urls)
    else:
        result = send(*extra, "--upload-url", urls["upload_url"], "--callback-url", urls["callback_url"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("202 "), result.stdout

    job = d.proc.wait_for_job(d.proc.job_for_event(event_id_of(result))["id"], timeout=TIMEOUT_S)
    assert job["status"] == "completed", job
    master = (MEDIA / "9x16.mp4").read_bytes()
    digest = hashlib.sha256(master).hexdigest()
    assert job["content_hash"] == f"sha256:{digest}"
    stored = d.platform.stored(key)
    assert stored is not None and stored.sha256 == digest and stored.content_type == "video/mp4"
    [callback] = d.platform.callbacks(token)
    assert callback.body == {
        "storageKey": sample_event("", "")["fulfillment"]["storageKey"],
        "extension": "mp4",
        "contentHash": f"sha256:{digest}",
    }


def test_the_same_event_id_twice_is_a_duplicate(deployment: Deployment) -> None:
    d = deployment
    event_id = f"evt_dup_{uuid.uuid4().hex[:12]}"
    urls = {"upload_url": d.platform.presign(f"dup/{event_id}"), "callback_url": d.platform.callback_url(new_token())}
    first = send_test_event(d, "--event-id", event_id, **urls)
    again = send_test_event(d, "--event-id", event_id, **urls)
    assert first.returncode == 0 and first.stdout.startswith("202 "), first.stdout
    assert again.returncode == 0 and again.stdout.startswith("200 "), again.stdout
    assert [j["event_id"] for j in d.proc.jobs()].count(event_id) == 1


def test_wrong_secret_exits_1_and_shows_the_401(deployment: Deployment) -> None:
    d = deployment
    wrong = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() if d.mode == "standard" else "wrong"
    event_id = f"evt_wrong_{uuid.uuid4().hex[:12]}"
    result = send_test_event(d, "--event-id", event_id, secret=wrong)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("401 "), result.stdout
    assert event_id not in [j["event_id"] for j in d.proc.jobs()]  # nothing stored


def test_config_signs_as_the_receiver_is_configured(deployment: Deployment) -> None:
    """No --secret, no --mode: the receiver's own file says how to sign (a Standard Webhooks receiver too)."""
    check_completed_run(deployment, "--config", str(deployment.proc.config_path), "--url", deployment.url,
                        signed_as_given=False)


@pytest.mark.parametrize("deployment", ["outpost"], indirect=True)
def test_the_secret_can_come_from_the_environment(deployment: Deployment) -> None:
    d = deployment
    urls = ["--upload-url", d.platform.presign(f"env/{uuid.uuid4().hex}"),
            "--callback-url", d.platform.callback_url(new_token())]
    taken = send("--url", d.url, "--secret-env", "FULFILLER_TEST_SIGNING", *urls,
                 env={"FULFILLER_TEST_SIGNING": d.secret})
    assert taken.returncode == 0 and taken.stdout.startswith("202 "), taken.stdout + taken.stderr
    assert d.secret not in taken.stdout + taken.stderr
    unset = send("--url", d.url, "--secret-env", "FULFILLER_TEST_UNSET_SIGNING", *urls)
    assert unset.returncode == 2 and unset.stdout == ""
    assert "  --secret-env: environment variable FULFILLER_TEST_UNSET_SIGNING is not set" in unset.stderr


@pytest.mark.parametrize("deployment", ["outpost"], indirect=True)
@pytest.mark.parametrize(("flags", "creative", "kind"), [
    (["--code", "ZZZ-77", "--variation", "3", "--locale", "fr_CA", "--kind", "image", "--aspect", "4x5"],
     {"code": "ZZZ-77", "variation": 3, "locale": "fr_CA", "kind": "image", "aspectRatio": "4x5"}, "oss"),
    (["--code", "ZZZ-78", "--family", "feed", "--accepted", "1x1, 4x5"],
     {"code": "ZZZ-78", "variation": 2, "locale": "en", "kind": "video", "placementFamily": "feed",
      "acceptedAspects": ["1x1", "4x5"]}, "afs"),
])
def test_the_flags_shape_the_request(deployment: Deployment, flags: list[str], creative: dict, kind: str) -> None:
    d = deployment
    token = new_token()
    result = send_test_event(d, *flags, upload_url=d.platform.presign(f"flags/{uuid.uuid4().hex}"),
                             callback_url=d.platform.callback_url(token))
    assert result.returncode == 0 and result.stdout.startswith("202 "), result.stdout + result.stderr
    job = d.proc.wait_for_job(d.proc.job_for_event(event_id_of(result))["id"], timeout=TIMEOUT_S)
    assert (job["creative"], job["request_kind"]) == (creative, kind)
    assert job["status"] == "skipped"  # no such master: the platform is told at once
    [callback] = d.platform.callbacks(token)
    assert callback.body["skip"] is True


@pytest.mark.parametrize(("args", "flag"), [
    (["--accepted", "1x1"], "--accepted"),  # goes with --family
    (["--family", "feed"], "--accepted"),  # which aspects? (no --config to take them from)
    (["--file", "body.json", "--code", "X-1"], "--code"),  # the file is sent as it is
    (["--mode", "standard"], "--secret"),  # no secret from any source (--secret is left out below)
])
def test_what_cannot_be_sent_is_refused_before_anything_is_sent(args: list[str], flag: str) -> None:
    secret = [] if flag == "--secret" else ["--secret", "s"]
    done = send("--url", "http://127.0.0.1:9/never", *secret, *args)
    assert done.returncode == 2
    assert done.stderr.startswith("config error:") and f"  {flag}: " in done.stderr, done.stderr
    assert done.stdout == ""


def test_config_gives_url_prefix_and_timestamp_and_flags_win() -> None:
    """What the receiver in the file would verify: its own prefix, and a timestamp when it requires one."""
    config = parse_config(textwrap.dedent("""
        server: {port: 9191}
        receiver:
          path: /hooks/in
          header_prefix: X-Acme-
          require_timestamp: true
          secrets: [from-the-file]
        catalogs: {local: {type: local}}
        routes: [{catalog: local}]
        """), env={})
    args = build_parser().parse_args(["send-test-event", "--config", "fulfiller.yaml"])
    how = signing(args, config)
    assert how == Signing(url="http://127.0.0.1:9191/hooks/in", mode="outpost", prefix="X-Acme-",
                          secrets=["from-the-file"], timestamped=True)
    body = event_body(args, config)
    headers = signed_headers(body, how.secrets, topic="video.source_requested", event_id="evt_1", mode=how.mode,
                             prefix=how.prefix, timestamped=how.timestamped)
    receiver = config.receiver
    verifier = Verifier(receiver.mode, receiver.secrets, receiver.prefix, receiver.timestamp_tolerance_s,
                        require_timestamp=receiver.require_timestamp)
    assert verifier.verify(body, {k.lower(): v for k, v in headers.items()}) == "evt_1"

    flags = build_parser().parse_args(["send-test-event", "--config", "fulfiller.yaml", "--url", "https://h/x",
                                       "--secret", "from-a-flag", "--mode", "standard", "--header-prefix", "w-"])
    assert signing(flags, config) == Signing(url="https://h/x", mode="standard", prefix="w-",
                                             secrets=["from-a-flag"], timestamped=True)


def test_config_signing_settings_are_the_ones_signed_with() -> None:
    """An operator who set Outpost's signing options tests them end to end: the event is signed with the
    receiver's own header names, algorithm, encoding and templates, and that receiver takes it."""
    config = parse_config(textwrap.dedent("""
        receiver:
          secrets: [current-secret, previous-secret]
          event_id_header: X-Hook-Id
          signature_header: X-Hook-Signature
          signature_algorithm: hmac-sha1
          signature_encoding: base64
          signature_content_template: "{{.EventID}}:{{.Timestamp.UnixMilli}}:{{.Body}}"
          signature_header_template: 'ts={{.Timestamp.UnixMilli}};sigs={{.Signatures | join " "}}'
        catalogs: {local: {type: local}}
        routes: [{catalog: local}]
        """), env={})
    args = build_parser().parse_args(["send-test-event", "--config", "fulfiller.yaml"])
    how = signing(args, config)
    body = event_body(args, config)
    headers = signed_headers(body, how.secrets, topic="video.source_requested", event_id="evt_7", mode=how.mode,
                             prefix=how.prefix, timestamped=how.timestamped, scheme=config.receiver.scheme())
    value = headers["x-hook-signature"]
    millis = re.fullmatch(r"ts=(\d+);sigs=(\S+) (\S+)", value)
    assert millis is not None, value
    content = f"evt_7:{millis.group(1)}:".encode() + body
    for secret, sig in zip(how.secrets, millis.groups()[1:], strict=True):
        assert sig == base64.b64encode(hmac.new(secret.encode(), content, hashlib.sha1).digest()).decode()
    assert headers["x-hook-id"] == "evt_7"
    assert config.receiver.verifier().verify(body, headers) == "evt_7"
