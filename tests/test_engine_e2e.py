"""Acceptance 1 of the fulfillment engine, end to end through a real ``fulfiller serve`` process.

Signed events go in over HTTP; masters come from moto's S3 server (the S3
catalog) or a local folder; bytes go to pre-signed PUT URLs (boto3's, against
moto standing in for R2, or the platform double's own, which checks signatures
and refuses chunked bodies); callbacks go to the platform double. What is
checked is what the platform would see: the object's bytes and Content-Type,
the callback body exactly as the platform documents it, and the job the
operator sees (status, fields, attempts).

One ``serve`` process for the whole module: every test uses its own creative
code, storage key and waitpoint token, so tests never see each other's work.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.masters import MEDIA, media, sha256
from support.moto_server import DUMMY_AWS_ENV, aws_test_env, moto_endpoint  # noqa: F401  (fixtures)
from support.platform import PlatformDouble, completion, new_token, run_platform, source_requested, storage_key

VIDEO_EXTS = ("mp4", "mov", "webm", "mkv")
IMAGE_EXTS = ("jpg", "png", "webp", "avif")
# The extension the platform must be told for each real type (its documented list).
EXTENSION_OF = {
    "video/mp4": "mp4", "video/quicktime": "mov", "video/webm": "webm", "video/x-matroska": "mkv",
    "image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/avif": "avif",
}
JOB_TIMEOUT_S = 30


def documented_mimes() -> dict[str, str]:
    """File name -> MIME type, from the table in tests/media/README.md."""
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([^`]+)` \|[^|]*\|$", (MEDIA / "README.md").read_text(), re.M)
    return dict(rows)


MIME_OF = documented_mimes()


def new_code(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


@dataclass
class Stack:
    proc: FulfillerProcess
    platform: PlatformDouble
    s3: Any
    masters_bucket: str
    r2_bucket: str
    local_root: Path

    def put_s3_master(self, code: str, name: str, data: bytes, variation: int = 1, locale: str = "en") -> None:
        self.s3.put_object(Bucket=self.masters_bucket, Key=f"{code}/v{variation}/{locale}/{name}", Body=data)

    def put_local_master(self, code: str, name: str, data: bytes, variation: int = 1, locale: str = "en") -> Path:
        path = self.local_root / code / f"v{variation}" / locale / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def r2_url(self, key: str) -> str:
        """A pre-signed PUT to the moto "R2" bucket, made exactly as the platform makes one with boto3."""
        return self.s3.generate_presigned_url(
            "put_object", Params={"Bucket": self.r2_bucket, "Key": key}, ExpiresIn=3600
        )

    def r2_object(self, key: str) -> tuple[bytes, str] | None:
        try:
            obj = self.s3.get_object(Bucket=self.r2_bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read(), obj["ContentType"]

    def run(self, event: dict[str, Any]) -> dict[str, Any]:
        """Deliver the event and wait for its job's final status; the job (with attempts)."""
        return self.proc.wait_for_job(self.proc.deliver(event), timeout=JOB_TIMEOUT_S)

    def oss(self, code: str, aspect: str = "9x16", kind: str = "video", *, to: str = "r2") -> tuple[dict, str, str]:
        """An OSS event for ``code`` uploading to moto ("r2") or the platform double ("double")."""
        return self._event(code, kind, to, aspect=aspect)

    def afs(self, code: str, family: str, kind: str = "video", *, accepted: list[str] | None = None,
            to: str = "r2") -> tuple[dict, str, str]:
        return self._event(code, kind, to, family=family, accepted=accepted)

    def _event(self, code: str, kind: str, to: str, **shape: Any) -> tuple[dict, str, str]:
        """The event, its storage key and its waitpoint token."""
        key = storage_key(code, shape.get("aspect") or shape["family"], kind)
        token = new_token()
        url = self.r2_url(key) if to == "r2" else self.platform.presign(key)
        event = source_requested(code, kind=kind, key=key, upload_url=url,
                                 callback_url=self.platform.callback_url(token), **shape)
        return event, key, token

    def assert_delivered(self, job: dict[str, Any], key: str, token: str, data: bytes, content_type: str,
                         extension: str, aspect: str | None = None) -> None:
        """Completed; the "R2" object holds exactly ``data`` as ``content_type``; one callback with the right body."""
        assert job["status"] == "completed", job
        assert self.r2_object(key) == (data, content_type)
        [callback] = self.platform.callbacks(token)
        assert callback.body == completion(key, data, extension, aspect)

    def assert_skipped(self, job: dict[str, Any], key: str, token: str, reason: str) -> None:
        """Skipped for ``reason``: a skip callback saying so, and nothing uploaded."""
        assert job["status"] == "skipped", job
        assert job["skip_reason"] == reason
        [callback] = self.platform.callbacks(token)
        assert callback.body == {"skip": True, "reason": reason}
        assert self.r2_object(key) is None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Stack]:  # noqa: F811
    root = tmp_path_factory.mktemp("engine-e2e")
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    suffix = uuid.uuid4().hex[:8]
    masters_bucket, r2_bucket = f"masters-{suffix}", f"r2-{suffix}"
    s3.create_bucket(Bucket=masters_bucket)
    s3.create_bucket(Bucket=r2_bucket)
    local_root = root / "masters"
    local_root.mkdir()
    moto_port = urlsplit(moto_endpoint).port
    with run_platform(root / "platform") as platform:
        platform_port = urlsplit(platform.base_url).port
        config = {
            "server": {"host": "127.0.0.1"},
            # Ports pinned: only moto (the "R2") and the platform double may receive anything.
            "worker": fast_worker([f"127.0.0.1:{moto_port}", f"127.0.0.1:{platform_port}"],
                                  [f"127.0.0.1:{platform_port}"]),
            "aspects": {"feed": ["4x5", "1x1", "3x4"], "story_reel": ["9x16"]},
            "catalogs": {
                "masters-s3": {"type": "s3", "bucket": masters_bucket, "region": "us-east-1",
                               "endpoint_url": moto_endpoint},
                "masters-local": {"type": "local", "root": str(local_root)},
            },
            "routes": [
                {"codes": ["LOC-*"], "catalog": "masters-local"},
                {"codes": ["S3-*"], "catalog": "masters-s3"},
            ],
        }
        env = {**DUMMY_AWS_ENV, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        with FulfillerProcess(root / "fulfiller", config, env=env) as proc:
            yield Stack(proc, platform, s3, masters_bucket, r2_bucket, local_root)
    s3.close()


def steps(job: dict[str, Any]) -> list[str]:
    return [a["step"] for a in job["attempts"]]


# -- OSS and AFS, positive ----------------------------------------------------------------


def test_oss_from_s3_uploads_the_master_and_completes_the_wait_token(stack: Stack) -> None:
    code = new_code("S3")
    data = media("9x16.mp4")
    stack.put_s3_master(code, "9x16.mp4", data)
    event, key, token = stack.oss(code)
    event_id = f"evt_{uuid.uuid4().hex}"

    job = stack.proc.wait_for_job(stack.proc.deliver(event, event_id=event_id), timeout=JOB_TIMEOUT_S)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    [callback] = stack.platform.callbacks(token)
    assert callback.content_type == "application/json"
    assert callback.status == 202
    assert job["request_kind"] == "oss"
    assert job["event_id"] == event_id
    assert job["storage_key"] == key
    assert job["creative"] == event["creative"]
    assert (job["chosen_aspect"], job["extension"], job["content_type"]) == ("9x16", "mp4", "video/mp4")
    assert (job["content_hash"], job["bytes"]) == (sha256(data), len(data))
    assert job["skip_reason"] is None and job["error"] is None
    assert job["source"] == f"masters-s3:s3://{stack.masters_bucket}/{code}/v1/en/9x16.mp4"
    assert job["runs"] == 1
    assert steps(job) == ["resolve", "upload", "callback"]
    assert attempts(job, "upload")[0]["http_status"] == 200
    assert attempts(job, "callback")[0]["http_status"] == 202

    # Outpost redelivers (at-least-once): answered 200, nothing new stored, no second callback.
    again = stack.proc.send_event(event, event_id=event_id)
    assert again.status_code == 200
    assert [j["id"] for j in stack.proc.jobs() if j["event_id"] == event_id] == [job["id"]]
    assert stack.proc.job(job["id"])["runs"] == 1
    assert len(stack.platform.callbacks(token)) == 1


def test_afs_delivers_the_most_preferred_aspect_the_catalog_has(stack: Stack) -> None:
    code = new_code("S3")
    stack.put_s3_master(code, "1x1.mp4", media("1x1.mp4"))
    stack.put_s3_master(code, "4x5.mp4", media("4x5.mp4"))
    event, key, token = stack.afs(code, "feed", accepted=["1x1", "3x4", "4x5"])

    job = stack.run(event)

    stack.assert_delivered(job, key, token, media("4x5.mp4"), "video/mp4", "mp4", aspect="4x5")
    assert job["request_kind"] == "afs"
    assert job["chosen_aspect"] == "4x5"
    assert key.endswith("/feed.video")


def test_afs_falls_back_to_a_less_preferred_aspect(stack: Stack) -> None:
    code = new_code("S3")
    data = media("3x4.mp4")
    stack.put_s3_master(code, "3x4.mp4", data)
    event, key, token = stack.afs(code, "feed")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4", aspect="3x4")
    # 4x5 and 1x1 were looked for first, in the configured order.
    assert "4x5: nothing" in attempts(job, "resolve")[0]["detail"]
    assert "1x1: nothing" in attempts(job, "resolve")[0]["detail"]


def test_hybrid_creative_feed_is_delivered_and_story_reel_skipped(stack: Stack) -> None:
    code = new_code("S3")
    data = media("4x5.mov")
    stack.put_s3_master(code, "4x5.mov", data)
    feed_event, feed_key, feed_token = stack.afs(code, "feed")
    story_event, story_key, story_token = stack.afs(code, "story_reel")

    feed_id = stack.proc.deliver(feed_event)
    story_id = stack.proc.deliver(story_event)
    feed = stack.proc.wait_for_job(feed_id, timeout=JOB_TIMEOUT_S)
    story = stack.proc.wait_for_job(story_id, timeout=JOB_TIMEOUT_S)

    stack.assert_delivered(feed, feed_key, feed_token, data, "video/quicktime", "mov", aspect="4x5")
    stack.assert_skipped(story, story_key, story_token, "no_match:acceptedAspects=[9x16]")
    assert steps(story) == ["resolve", "callback"]


# -- measured media -------------------------------------------------------------------------


def test_the_job_shows_the_measured_picture_of_a_rotated_master(stack: Stack) -> None:
    code = new_code("S3")
    data = (MEDIA / "cases" / "rotated_90.mp4").read_bytes()  # coded 320x180, displayed 180x320
    stack.put_s3_master(code, "9x16.mp4", data)
    event, key, token = stack.oss(code, "9x16")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    assert job["measured"] == {"width": 180, "height": 320, "rotation": 90, "aspect": "9x16"}
    assert "measured 180x320, rotation 90, aspect 9x16" in attempts(job, "resolve")[0]["detail"]


def test_a_mislabelled_master_is_never_uploaded_and_the_skip_says_why(stack: Stack) -> None:
    code = new_code("S3")
    stack.put_s3_master(code, "9x16.mp4", (MEDIA / "cases" / "mislabelled" / "9x16.mp4").read_bytes())
    event, key, token = stack.oss(code, "9x16")

    job = stack.run(event)

    stack.assert_skipped(job, key, token, "aspect_mismatch:asked=9x16,measured=1x1")
    assert steps(job) == ["resolve", "callback"]
    assert "9x16.mp4 measures 1x1, not 9x16: passed over" in attempts(job, "resolve")[0]["detail"]


def test_afs_passes_a_mislabelled_master_over_for_the_next_accepted_aspect(stack: Stack) -> None:
    code = new_code("S3")
    stack.put_s3_master(code, "4x5.mp4", media("1x1.mp4"))  # named 4x5, really square
    data = media("1x1.mov")
    stack.put_s3_master(code, "1x1.mov", data)
    event, key, token = stack.afs(code, "feed")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/quicktime", "mov", aspect="1x1")
    assert job["measured"]["aspect"] == "1x1"


# -- skips ----------------------------------------------------------------------------------


def test_no_route_is_a_skip(stack: Stack) -> None:
    code = new_code("NOWHERE")
    event, key, token = stack.oss(code)

    job = stack.run(event)

    stack.assert_skipped(job, key, token, "no_route")
    assert steps(job) == ["resolve", "callback"]


def test_no_match_is_a_skip_naming_the_aspect(stack: Stack) -> None:
    code = new_code("S3")
    stack.put_s3_master(code, "4x5.mp4", media("4x5.mp4"))  # another aspect is not a match
    event, key, token = stack.oss(code, "9x16")

    job = stack.run(event)

    stack.assert_skipped(job, key, token, "no_match:aspect=9x16")


@pytest.mark.parametrize(
    ("kind", "saved_as", "real"),
    [("video", "9x16.mp4", "9x16.jpg"), ("image", "9x16.png", "9x16.webm")],
    ids=["image-saved-as-mp4", "video-saved-as-png"],
)
def test_a_master_of_the_wrong_kind_is_passed_over(stack: Stack, kind: str, saved_as: str, real: str) -> None:
    code = new_code("S3")
    stack.put_s3_master(code, saved_as, media(real))
    event, key, token = stack.oss(code, "9x16", kind)

    job = stack.run(event)

    stack.assert_skipped(job, key, token, "no_match:aspect=9x16")
    assert f"{saved_as} is {MIME_OF[real]}, not a {kind}: passed over" in attempts(job, "resolve")[0]["detail"]


def test_a_master_of_the_wrong_kind_gives_way_to_the_next_candidate(stack: Stack) -> None:
    code = new_code("S3")
    stack.put_s3_master(code, "9x16.mp4", media("9x16.jpg"))  # ranked first, but an image
    data = media("9x16.mov")
    stack.put_s3_master(code, "9x16.mov", data)
    event, key, token = stack.oss(code, "9x16")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/quicktime", "mov")


# -- every format -----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", VIDEO_EXTS + IMAGE_EXTS)
def test_every_format_is_delivered_with_its_real_type(stack: Stack, ext: str) -> None:
    kind = "video" if ext in VIDEO_EXTS else "image"
    name = f"1x1.{ext}"
    data = media(name)
    mime = MIME_OF[name]
    code = new_code("S3")
    stack.put_s3_master(code, name, data)
    event, key, token = stack.oss(code, "1x1", kind)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, mime, EXTENSION_OF[mime])
    assert (job["content_type"], job["extension"]) == (mime, EXTENSION_OF[mime])


def test_a_misnamed_master_is_sent_as_what_it_really_is(stack: Stack) -> None:
    code = new_code("S3")
    data = media("9x16.mov")  # QuickTime, saved with an .mp4 name
    stack.put_s3_master(code, "9x16.mp4", data)
    event, key, token = stack.oss(code, "9x16")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/quicktime", "mov")


# -- local catalog, through the platform's own (strict) R2 double ---------------------------------


def test_local_catalog_oss_to_the_platform_double(stack: Stack) -> None:
    code = new_code("LOC")
    data = media("9x16.webm")
    stack.put_local_master(code, "9x16.webm", data)
    event, key, token = stack.oss(code, "9x16", to="double")

    job = stack.run(event)

    assert job["status"] == "completed", job
    stored = stack.platform.stored(key)
    assert stored is not None
    assert (stored.read_bytes(), stored.content_type) == (data, "video/webm")
    [upload] = stack.platform.uploads(key)
    # The double refuses chunked bodies and bodies without a length: this one had a length and no chunking.
    assert (upload.content_length, upload.transfer_encoding, upload.status) == (len(data), None, 200)
    [callback] = stack.platform.callbacks(token)
    assert callback.body == {"storageKey": key, "extension": "webm", "contentHash": sha256(data)}
    assert job["source"] == f"masters-local:{code}/v1/en/9x16.webm"


def test_local_catalog_afs_image(stack: Stack) -> None:
    code = new_code("LOC")
    stack.put_local_master(code, "3x4.png", media("3x4.png"))
    data = media("1x1.png")
    stack.put_local_master(code, "1x1.PNG", data)  # extensions match case blind
    event, key, token = stack.afs(code, "feed", "image", to="double")

    job = stack.run(event)

    assert job["status"] == "completed", job
    assert key.endswith("/feed.image")
    stored = stack.platform.stored(key)
    assert stored is not None and (stored.read_bytes(), stored.content_type) == (data, "image/png")
    [callback] = stack.platform.callbacks(token)
    assert callback.body == {"storageKey": key, "aspectRatio": "1x1", "extension": "png", "contentHash": sha256(data)}


# -- what operators see --------------------------------------------------------------------------


def test_no_signature_or_token_reaches_the_log_or_the_admin_api(stack: Stack) -> None:
    code = new_code("LOC")
    stack.put_local_master(code, "9x16.mp4", media("9x16.mp4"))
    event, key, token = stack.oss(code, "9x16", to="double")
    query = parse_qs(urlsplit(event["fulfillment"]["uploadUrl"]).query)
    signature, credential = query["X-Amz-Signature"][0], query["X-Amz-Credential"][0]
    stack.platform.fail_uploads(1, 503, key=key)  # a retry, so errors and warnings are logged too

    job = stack.run(event)

    assert job["status"] == "completed", job
    log = stack.proc.log_containing(job["id"])  # the log does talk about this job
    admin = json.dumps(stack.proc.job(job["id"])) + json.dumps(stack.proc.jobs())
    for secret in (signature, credential, quote(credential, safe=""), token):
        assert secret not in log
        assert secret not in admin
    # ...while what an operator needs to follow the delivery is still there.
    assert urlsplit(stack.platform.base_url).netloc in json.dumps(stack.proc.job(job["id"])["event"])
    assert key in admin
