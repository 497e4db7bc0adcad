"""``fulfiller send-test-event`` (a subprocess) against ``fulfiller serve`` (a subprocess).

The operator's proof of a deployment: the sample event, signed as Outpost signs
it, is accepted and becomes a completed job; the master in a local catalog is
uploaded to the platform double and the callback completes the wait token. Both
signing modes (Outpost's default, with and without a timestamp, and Standard
Webhooks with a ``whsec_`` secret); a wrong secret exits 1 and shows the 401.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fulfiller.ops.testevent import sample_event
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
    args = [*fulfiller_command(), "send-test-event", "--url", d.url, "--secret", secret or d.secret,
            "--mode", d.mode, *extra]
    if upload_url:
        args += ["--upload-url", upload_url]
    if callback_url:
        args += ["--callback-url", callback_url]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_sample_event_becomes_a_completed_job(deployment: Deployment) -> None:
    check_completed_run(deployment)


@pytest.mark.parametrize("deployment", ["outpost"], indirect=True)
def test_timestamped_outpost_signature(deployment: Deployment) -> None:
    """``t=<unix>,v0=<hex>``: Outpost's timestamped template (Standard Webhooks always carry one)."""
    check_completed_run(deployment, "--timestamped")


def check_completed_run(d: Deployment, *extra: str) -> None:
    key = f"send-test-event/{uuid.uuid4().hex}"
    token = new_token()
    result = send_test_event(d, *extra, upload_url=d.platform.presign(key), callback_url=d.platform.callback_url(token))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("202 "), result.stdout
    event_id = re.search(r"\(event (\S+), topic video\.source_requested\)", result.stdout).group(1)

    job = d.proc.wait_for_job(d.proc.job_for_event(event_id)["id"], timeout=TIMEOUT_S)
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
