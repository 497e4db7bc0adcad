"""Google Drive as the catalog, end to end through a real ``fulfiller serve`` process.

The Drive v3 double (support.drive_double) and the platform double (its R2-style
upload URLs and wait-token callbacks) listen on 127.0.0.1 in this process; the
fulfiller is a subprocess whose config names a ``type: drive`` catalog with the
double's ``api_endpoint`` and a service-account key the double wrote, so it
runs the production path: google-auth's JWT grant, google-api-python-client's
listings, streaming media downloads. What is checked is what the platform would
see (the object's bytes and Content-Type, the callback bodies) and the job an
operator sees, plus what the double saw (retries, Range requests, tokens).

The catalog's own behaviour is unit-tested in tests/catalogs/test_drive.py;
here the point is that the engine turns each Drive outcome into the right job.
One ``serve`` process and one double for the module: every test uses its own
creative code, storage key and waitpoint token, and waits for its jobs to end
before the next begins, so the double's fault knobs and counters are never
shared between tests.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from support.drive_double import DriveDouble, Hit, run_drive_double
from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.masters import media, moov_at_end, sha256
from support.netguard import block_network
from support.platform import PlatformDouble, completion, new_token, run_platform, source_requested, storage_key
from support.servers import fulfiller_command

JOB_TIMEOUT_S = 30
CLI_TIMEOUT_S = 60
SERVICE_ACCOUNT = "fulfiller-test@drive-double.iam.gserviceaccount.com"


def big_mp4(size: int, seed: int) -> bytes:
    """A real MP4 head (so it sniffs as video/mp4) padded with random bytes to ``size``."""
    head = media("9x16.mp4")
    return head + random.Random(seed).randbytes(size - len(head))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # This process talks to loopback only; the fulfiller subprocess is configured with nothing else.
    block_network(monkeypatch)


class Window:
    """What the Drive double saw from a point on: request counts and hits, as deltas."""

    def __init__(self, drive: DriveDouble):
        self.drive = drive
        self.before = Counter(drive.counts)
        self.start = len(drive.hits)

    def count(self, key: str) -> int:
        return self.drive.counts[key] - self.before[key]

    def hits(self, kind: str) -> list[Hit]:
        return [h for h in self.drive.hits[self.start :] if h.kind == kind]


@dataclass
class Stack:
    proc: FulfillerProcess
    platform: PlatformDouble
    drive: DriveDouble
    my_root: str  # a My Drive folder, root of catalog drive-my (codes MY-*)
    shared_root: str  # a Shared Drive, root of catalog drive-shared (codes SD-*)

    def new_code(self, where: str) -> str:
        return f"{'MY' if where == 'my' else 'SD'}-{uuid.uuid4().hex[:10].upper()}"

    def leaf(self, code: str, variation: int = 1, locale: str = "en") -> str:
        """The folder the default layout looks in for ``code``, created under its catalog's root."""
        root = self.my_root if code.startswith("MY-") else self.shared_root
        return self.drive.add_folders(f"{code}/v{variation}/{locale}", root)

    def catalog_of(self, code: str) -> str:
        return "drive-my" if code.startswith("MY-") else "drive-shared"

    def oss(self, code: str, aspect: str = "9x16", kind: str = "video") -> tuple[dict[str, Any], str, str]:
        """An OSS event for ``code``: the event, its storage key and its waitpoint token (both its own)."""
        return self._event(code, kind, aspect=aspect)

    def afs(self, code: str, family: str = "feed") -> tuple[dict[str, Any], str, str]:
        return self._event(code, "video", family=family)

    def _event(self, code: str, kind: str, **shape: str) -> tuple[dict[str, Any], str, str]:
        project_id = str(uuid.uuid4())  # a storage key of its own, even for a second request of one creative
        key = storage_key(code, shape.get("aspect") or shape["family"], kind, project_id=project_id)
        token = new_token()
        event = source_requested(code, kind=kind, key=key, project_id=project_id, upload_url=self.platform.presign(key),
                                 callback_url=self.platform.callback_url(token), **shape)
        return event, key, token

    def run(self, event: dict[str, Any]) -> dict[str, Any]:
        """Deliver the event and wait for its job's final status; the job (with attempts)."""
        return self.proc.wait_for_job(self.proc.deliver(event), timeout=JOB_TIMEOUT_S)

    def assert_delivered(self, job: dict[str, Any], key: str, token: str, data: bytes, content_type: str,
                         extension: str, aspect: str | None = None) -> None:
        """Completed; the object holds exactly ``data`` as ``content_type``; one callback with the right body."""
        assert job["status"] == "completed", job
        stored = self.platform.stored(key)
        assert stored is not None, self.platform.uploads(key)
        assert stored.read_bytes() == data
        assert stored.content_type == content_type
        [upload] = self.platform.uploads(key)
        assert (upload.content_length, upload.transfer_encoding) == (len(data), None)
        [callback] = self.platform.callbacks(token)
        assert callback.body == completion(key, data, extension, aspect)
        assert (job["content_type"], job["extension"]) == (content_type, extension)
        assert (job["content_hash"], job["bytes"]) == (sha256(data), len(data))
        assert job["error"] is None and job["skip_reason"] is None

    def assert_not_delivered(self, job: dict[str, Any], key: str, token: str) -> None:
        """Failed: nothing stored under the key and no callback at all (the wait token stays open)."""
        assert job["status"] == "failed", job
        assert self.platform.stored(key) is None
        assert self.platform.callbacks(token) == []
        assert attempts(job, "callback") == []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("drive-e2e")
    with run_drive_double() as drive, run_platform(root / "platform") as platform:
        my_root = drive.add_folder("Masters")
        shared_root = drive.add_shared_drive("Creative Masters")
        key_file = drive.write_service_account(root)  # its token_uri is the double's
        platform_port = urlsplit(platform.base_url).port
        catalog = {"type": "drive", "credentials_file": str(key_file), "api_endpoint": drive.api_endpoint}
        config = {
            "server": {"host": "127.0.0.1"},
            "worker": fast_worker([f"127.0.0.1:{platform_port}"], [f"127.0.0.1:{platform_port}"]),
            "aspects": {"feed": ["4x5", "1x1", "3x4"], "story_reel": ["9x16"]},
            "catalogs": {
                "drive-my": {**catalog, "root_folder_id": my_root},
                "drive-shared": {**catalog, "root_folder_id": shared_root},
            },
            "routes": [
                {"codes": ["MY-*"], "catalog": "drive-my"},
                {"codes": ["SD-*"], "catalog": "drive-shared"},
            ],
        }
        with FulfillerProcess(root / "fulfiller", config) as proc:
            yield Stack(proc, platform, drive, my_root, shared_root)


# -- delivering from My Drive and from a Shared Drive ------------------------------------


@pytest.mark.parametrize("where", ["my", "shared"])
def test_oss_request_is_delivered(stack: Stack, where: str) -> None:
    code = stack.new_code(where)
    data = media("9x16.mp4")
    file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), data, mime_type="video/mp4")
    stack.drive.add_file("4x5.mp4", stack.leaf(code), media("4x5.mp4"))  # another aspect: not asked for
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    assert job["request_kind"] == "oss" and job["chosen_aspect"] == "9x16"
    assert job["source"] == f"{stack.catalog_of(code)}:drive:{code}/v1/en/9x16.mp4"
    assert [a["step"] for a in job["attempts"]] == ["resolve", "upload", "callback"]
    media_hits = seen.hits("media")
    assert [h.params.get("supportsAllDrives") for h in media_hits] == ["true"]
    # One whole GET: the sniff reads its first chunk and the upload goes on with the same stream.
    assert [h.range for h in media_hits] == [None]
    assert all(h.status in (200, 206) for h in media_hits)
    assert {h.params.get("corpora") for h in seen.hits("list")} == ({"drive"} if where == "shared" else {None})
    if where == "shared":
        assert {h.params["driveId"] for h in seen.hits("list")} == {stack.shared_root}
        assert stack.drive.items[file_id].drive_id == stack.shared_root


@pytest.mark.parametrize("where", ["my", "shared"])
def test_afs_request_gets_the_most_preferred_aspect_there(stack: Stack, where: str) -> None:
    code = stack.new_code(where)
    leaf = stack.leaf(code)
    stack.drive.add_file("3x4.mp4", leaf, media("3x4.mp4"))
    stack.drive.add_file("1x1.mov", leaf, media("1x1.mov"))  # feed prefers 4x5 (absent), then 1x1
    stack.drive.add_file("9x16.mp4", leaf, media("9x16.mp4"))  # not in the feed family
    event, key, token = stack.afs(code, "feed")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, media("1x1.mov"), "video/quicktime", "mov", aspect="1x1")
    assert job["request_kind"] == "afs" and job["chosen_aspect"] == "1x1"
    assert "4x5: nothing in " + stack.catalog_of(code) in attempts(job, "resolve")[0]["detail"]


def test_an_image_from_a_shared_drive(stack: Stack) -> None:
    code = stack.new_code("shared")
    stack.drive.add_file("9x16.JPG", stack.leaf(code), media("9x16.jpg"))
    stack.drive.add_file("9x16.mp4", stack.leaf(code), media("9x16.mp4"))  # a video: not for an image request
    event, key, token = stack.oss(code, kind="image")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, media("9x16.jpg"), "image/jpeg", "jpg")


def test_a_mislabelled_master_is_never_downloaded_whole_nor_uploaded(stack: Stack) -> None:
    code = stack.new_code("my")
    stack.drive.add_file("9x16.mp4", stack.leaf(code), media("cases/mislabelled/9x16.mp4"))  # really square
    event, key, token = stack.oss(code)

    job = stack.run(event)

    assert job["status"] == "skipped" and job["skip_reason"] == "aspect_mismatch:asked=9x16,measured=1x1"
    [callback] = stack.platform.callbacks(token)
    assert callback.body == {"skip": True, "reason": "aspect_mismatch:asked=9x16,measured=1x1"}
    assert not stack.platform.uploads(key)
    assert "9x16.mp4 measures 1x1, not 9x16: passed over" in attempts(job, "resolve")[0]["detail"]


def test_a_moov_at_the_end_is_measured_with_small_range_reads(stack: Stack) -> None:
    code = stack.new_code("my")
    data = moov_at_end(3 * 1024 * 1024)
    stack.drive.add_file("9x16.mp4", stack.leaf(code), data, mime_type="video/mp4")
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    assert job["measured"] == {"width": 180, "height": 320, "rotation": 0, "aspect": "9x16"}
    ranges = [h.range for h in seen.hits("media")]
    # the stream's one whole GET, then the moov's box header and the moov alone
    assert ranges[0] is None and len(ranges) == 3
    spans = [tuple(int(n) for n in r.removeprefix("bytes=").split("-")) for r in ranges[1:]]
    assert sum(end - start + 1 for start, end in spans) < 64 * 1024


def test_a_shortcut_is_delivered_as_its_target(stack: Stack) -> None:
    code = stack.new_code("my")
    finals = stack.drive.add_folder(f"Finals {code}", stack.my_root)
    target = stack.drive.add_file("final-cut-v3.mov", finals, media("9x16.mov"))
    stack.drive.add_shortcut("9x16.mov", stack.leaf(code), target)
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, media("9x16.mov"), "video/quicktime", "mov")
    assert job["source"] == f"drive-my:drive:{code}/v1/en/9x16.mov"
    assert {h.file_id for h in seen.hits("media")} == {target}  # the bytes came from the target


def test_trashed_decoys_are_passed_over(stack: Stack) -> None:
    code = stack.new_code("shared")
    drive = stack.drive
    code_folder = drive.add_folders(code, stack.shared_root)
    # A trashed "v1" made first (it would win the tie by id) holding a master that must not be found.
    trashed_v1 = drive.add_folder("v1", code_folder, trashed=True)
    drive.add_file("9x16.mp4", drive.add_folder("en", trashed_v1), media("1x1.mp4"))
    leaf = drive.add_folder("en", drive.add_folder("v1", code_folder))
    drive.add_file("9x16.mp4", leaf, media("4x5.mp4"), trashed=True)  # mp4 ranks first, but it is in the bin
    drive.add_shortcut("9x16.mov", leaf, drive.add_file("old.mov", code_folder, media("4x5.mov"), trashed=True))
    data = media("9x16.webm")
    drive.add_file("9x16.webm", leaf, data)
    event, key, token = stack.oss(code)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/webm", "webm")
    assert job["source"] == f"drive-shared:drive:{code}/v1/en/9x16.webm"


def test_two_files_with_one_stem_the_choice_is_deterministic(stack: Stack) -> None:
    code = stack.new_code("my")
    leaf = stack.leaf(code)
    drive = stack.drive
    drive.add_file("9x16.webm", leaf, media("9x16.webm"))
    drive.add_file("9x16.MOV", leaf, media("9x16.mov"))
    newer = media("9x16_faststart.mp4")
    # Drive allows one name twice in a folder: the newer wins, whichever was added (or listed) first.
    drive.add_file("9x16.mp4", leaf, newer, modified_time="2024-06-01T10:00:00.000Z")
    drive.add_file("9x16.mp4", leaf, media("9x16.mp4"), modified_time="2024-05-01T10:00:00.000Z")

    for _ in range(2):
        event, key, token = stack.oss(code)
        job = stack.run(event)
        stack.assert_delivered(job, key, token, newer, "video/mp4", "mp4")


def test_paging_past_a_thousand_items(stack: Stack) -> None:
    code = stack.new_code("shared")
    leaf = stack.leaf(code)
    for i in range(1_150):
        stack.drive.add_file(f"take-{i:04d}.mp4", leaf, b"x")
    data = media("9x16.mkv")
    stack.drive.add_file("9x16.mkv", leaf, data)  # listed last: on the second page
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/x-matroska", "mkv")
    leaf_pages = [h for h in seen.hits("list") if f"'{leaf}' in parents" in h.params["q"]]
    assert [("pageToken" in h.params, h.params["pageSize"]) for h in leaf_pages] == [(False, "1000"), (True, "1000")]


def test_a_google_doc_named_like_a_master_is_ignored(stack: Stack) -> None:
    code = stack.new_code("my")
    leaf = stack.leaf(code)
    stack.drive.add_google_doc("4x5.mp4", leaf)  # the most preferred feed aspect, but a Doc
    stack.drive.add_google_doc("9x16.mp4", leaf)
    data = media("1x1.webm")
    stack.drive.add_file("1x1.webm", leaf, data)

    feed_event, feed_key, feed_token = stack.afs(code, "feed")
    feed = stack.run(feed_event)
    story_event, story_key, story_token = stack.oss(code, "9x16")
    story = stack.run(story_event)

    stack.assert_delivered(feed, feed_key, feed_token, data, "video/webm", "webm", aspect="1x1")
    assert story["status"] == "skipped", story
    assert story["skip_reason"] == "no_match:aspect=9x16"
    assert [c.body for c in stack.platform.callbacks(story_token)] == [
        {"skip": True, "reason": "no_match:aspect=9x16"}
    ]
    assert stack.platform.uploads(story_key) == []


# -- Drive faults, as the engine handles them ---------------------------------------------


def test_throttling_is_retried_to_completion(stack: Stack) -> None:
    code = stack.new_code("my")
    data = media("9x16.mp4")
    stack.drive.add_file("9x16.mp4", stack.leaf(code), data)
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)
    stack.drive.fail_next(1, 429, "rateLimitExceeded", kind="list")
    # The download meets Drive's 403 flavour of throttling.
    stack.drive.fail_next(1, 403, "rateLimitExceeded", kind="media")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    assert (seen.count("list 429"), seen.count("media 403")) == (1, 1)
    media_hits = [(h.status, h.range) for h in seen.hits("media")]
    assert media_hits == [(403, None), (200, None)]
    # The catalog tried each request once; the engine retried the step.
    assert [a["step"] for a in job["attempts"]] == ["resolve", "resolve", "resolve", "upload", "callback"]
    throttled_list, throttled_media, found = attempts(job, "resolve")
    assert "HTTP 429 rateLimitExceeded" in throttled_list["error"]
    assert "HTTP 403 rateLimitExceeded" in throttled_media["error"]
    assert found["error"] is None
    assert len(stack.platform.uploads(key)) == 1


def ended_at(attempt: dict[str, Any]) -> float:
    """When a recorded attempt ended, in epoch seconds."""
    return datetime.fromisoformat(attempt["started_at"]).timestamp() + attempt["duration_ms"] / 1000


def test_drive_retry_after_is_honoured_by_the_engine(stack: Stack) -> None:
    code = stack.new_code("my")
    data = media("9x16.mp4")
    stack.drive.add_file("9x16.mp4", stack.leaf(code), data)
    event, key, token = stack.oss(code)
    stack.drive.fail_next(1, 429, "rateLimitExceeded", retry_after=1, kind="list")

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    throttled, found = attempts(job, "resolve")
    assert "HTTP 429 rateLimitExceeded" in throttled["error"]
    waited = datetime.fromisoformat(found["started_at"]).timestamp() - ended_at(throttled)
    assert waited >= 0.9  # the engine's backoff alone would be ~0.02 s


@pytest.mark.parametrize("when", ["resolve", "upload"])
def test_a_drive_outage_is_retried_to_completion(stack: Stack, when: str) -> None:
    code = stack.new_code("shared")
    data = big_mp4(3 * 1024 * 1024, seed=5)
    file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), data)
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)
    if when == "resolve":
        stack.drive.fail_next(2, 503, "backendError", kind="list")
    else:
        # The resume after a cut meets the outage, once the upload is under way.
        stack.drive.cut_download(file_id, after_bytes=1_500_000)
        stack.drive.after("media", 1, lambda: stack.drive.fail_next(1, 503, "backendError", kind="media"))

    job = stack.run(event)

    assert job["status"] == "completed", job
    assert stack.platform.stored(key).read_bytes() == data  # type: ignore[union-attr]
    [callback] = stack.platform.callbacks(token)
    assert callback.body == completion(key, data, "mp4")
    if when == "resolve":
        assert seen.count("list 503") == 2
        assert [a["step"] for a in job["attempts"]] == ["resolve", "resolve", "resolve", "upload", "callback"]
        assert [u.outcome for u in stack.platform.uploads(key)] == ["stored"]
    else:
        # The first PUT is abandoned short; the retry streams the master again from its first byte.
        assert [(h.status, h.range) for h in seen.hits("media")] == [
            (200, None), (503, "bytes=1500000-"), (200, None)]
        # A retried upload finds its master again (it may have been replaced or moved meanwhile).
        assert [a["step"] for a in job["attempts"]] == ["resolve", "upload", "resolve", "upload", "callback"]
        assert "HTTP 503 backendError" in attempts(job, "upload")[0]["error"]
        first, second = stack.platform.wait_for_uploads(2, key=key)
        assert (first.outcome, second.outcome) == ("disconnected", "stored")


@pytest.mark.parametrize("served_from", ["memory", "disk"])
def test_a_download_cut_midway_resumes_by_range(stack: Stack, tmp_path: Path, served_from: str) -> None:
    code = stack.new_code("shared")
    data = big_mp4(5 * 1024 * 1024 + 17, seed=1)
    if served_from == "memory":
        file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), data)
    else:  # streamed from a file, as the benchmark serves its gigabyte
        (tmp_path / "master.mp4").write_bytes(data)
        file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), path=tmp_path / "master.mp4")
    stack.drive.cut_download(file_id, after_bytes=2_500_000)  # mid-chunk: the worker's chunks are 1 MiB
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    ranges = [h.range for h in seen.hits("media")]
    assert ranges == [None, "bytes=2500000-"]  # resumed right where the cut fell: no byte asked for twice
    # One PUT, fed across the cut: the upload was not restarted.
    assert len(attempts(job, "upload")) == 1 and len(stack.platform.uploads(key)) == 1


def test_token_expiry_mid_run_is_refreshed(stack: Stack) -> None:
    code = stack.new_code("my")
    data = big_mp4(3 * 1024 * 1024, seed=3)
    file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), data)
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)
    # Expire every token twice: mid folder walk (metadata path) and mid download, which a cut
    # connection then makes resume with a token that is no longer good (media path).
    stack.drive.after("list", 1, stack.drive.expire_tokens)
    stack.drive.cut_download(file_id, after_bytes=1_500_000)
    stack.drive.after("media", 1, stack.drive.expire_tokens)

    job = stack.run(event)

    stack.assert_delivered(job, key, token, data, "video/mp4", "mp4")
    assert (seen.count("list 401"), seen.count("media 401")) == (1, 1)
    assert [(h.status, h.range) for h in seen.hits("media")] == [
        (200, None), (401, "bytes=1500000-"), (206, "bytes=1500000-")]
    assert (seen.count("token"), seen.count("token 200")) == (2, 2)
    assert len(job["attempts"]) == 3


@pytest.mark.parametrize("when", ["resolve", "upload"])
def test_download_quota_exceeded_fails_the_job_and_says_why(stack: Stack, when: str) -> None:
    code = stack.new_code("my")
    file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), big_mp4(3 * 1024 * 1024, seed=4))
    event, key, token = stack.oss(code)
    seen = Window(stack.drive)
    if when == "resolve":
        stack.drive.deny_download(file_id)  # the first GET, whose head the sniff reads, is refused
    else:
        # Refused on the resume, once the upload is under way.
        stack.drive.cut_download(file_id, after_bytes=1_500_000)
        stack.drive.after("media", 1, lambda: stack.drive.deny_download(file_id))

    job = stack.run(event)

    stack.assert_not_delivered(job, key, token)
    assert "downloadQuotaExceeded" in job["error"]
    assert "download quota is exhausted; try later or copy it" in job["error"]
    assert f"drive:{code}/v1/en/9x16.mp4" in job["error"]
    assert seen.count("media 403") == 1  # final: not retried
    assert [a["step"] for a in job["attempts"]] == (["resolve"] if when == "resolve" else ["resolve", "upload"])


@pytest.mark.parametrize("checksum", ["md5Checksum", "sha256Checksum"])
def test_a_checksum_mismatch_is_never_reported_complete(stack: Stack, checksum: str) -> None:
    code = stack.new_code("shared")
    data = big_mp4(2 * 1024 * 1024 + 5, seed=2)
    file_id = stack.drive.add_file("9x16.mp4", stack.leaf(code), data)
    if checksum == "md5Checksum":
        stack.drive.omit_checksum(file_id, "sha256Checksum")  # older files: Drive lists only the md5
    wrong = stack.drive.corrupt_checksum(file_id, checksum)
    event, key, token = stack.oss(code)

    job = stack.run(event)

    stack.assert_not_delivered(job, key, token)
    algorithm = "md5" if checksum == "md5Checksum" else "sha256"
    assert f"{algorithm} mismatch" in job["error"]
    assert wrong in job["error"]
    assert hashlib.new(algorithm, data).hexdigest() in job["error"]
    assert job["content_hash"] is None
    # The last chunk was held back until the checksum was known: the PUT ended short and nothing was kept.
    [upload] = stack.platform.wait_for_uploads(1, key=key)
    assert (upload.outcome, upload.content_length) == ("disconnected", len(data))
    assert upload.received < len(data)


# -- the operator's commands against a Drive route ----------------------------------------


def fulfiller(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fulfiller_command(), *args], capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def test_resolve_prints_what_would_be_delivered(stack: Stack) -> None:
    code = stack.new_code("shared")
    leaf = stack.leaf(code)
    stack.drive.add_file("9x16.mp4", leaf, media("9x16_faststart.mp4"))
    stack.drive.add_file("3x4.mov", leaf, media("3x4.mov"))
    config = str(stack.proc.config_path)
    common = ["--config", config, "--code", code, "--variation", "1", "--locale", "en"]

    oss = fulfiller("resolve", *common, "--aspect", "9x16")
    afs = fulfiller("resolve", *common, "--family", "feed")
    none = fulfiller("resolve", *common, "--aspect", "4x5")

    assert oss.returncode == 0, oss.stderr
    notes, found = oss.stdout.splitlines()[:1], oss.stdout.splitlines()[1:]
    assert notes == [f"  note: drive-shared:drive:{code}/v1/en/9x16.mp4 measured 180x320, rotation 0, aspect 9x16"]
    assert found == [
        "catalog:  drive-shared",
        f"object:   drive:{code}/v1/en/9x16.mp4",
        f"size:     {len(media('9x16_faststart.mp4'))} bytes",
        "type:     video/mp4 (extension mp4)",
        "aspect:   9x16",
        "measured: 180x320, rotation 0, aspect 9x16",
    ]
    assert afs.returncode == 0, afs.stderr
    assert f"object:   drive:{code}/v1/en/3x4.mov" in afs.stdout.splitlines()
    assert "type:     video/quicktime (extension mov)" in afs.stdout.splitlines()
    assert "aspect:   3x4" in afs.stdout.splitlines()
    assert none.returncode == 3, none.stderr
    assert none.stdout.splitlines()[-1] == "would skip: no_match:aspect=4x5"


def test_check_config_probe_lists_the_drive_roots(stack: Stack) -> None:
    result = fulfiller("check-config", "--probe", "--config", str(stack.proc.config_path))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    mine = next(line for line in lines if line.strip().startswith("drive-my:"))
    shared = next(line for line in lines if line.strip().startswith("drive-shared:"))
    assert mine.strip().startswith(f"drive-my: ok: drive folder 'Masters' ({stack.my_root}, My Drive): ")
    assert shared.strip().startswith(
        f"drive-shared: ok: drive folder 'Creative Masters' ({stack.shared_root}, shared drive {stack.shared_root}): "
    )
    assert mine.endswith(f"items visible to {SERVICE_ACCOUNT}")


def foreign_service_account(drive: DriveDouble, directory: Path) -> Path:
    """A well-formed key file for the double's account, but signed with a key the double never issued."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = directory / "revoked-key.json"
    path.write_text(json.dumps({**drive.service_account_info(), "private_key": pem, "private_key_id": "revoked"}))
    return path


def probe_config(directory: Path, drive: DriveDouble, root_folder_id: str, key_file: Path) -> Path:
    config = {
        "state": f"sqlite:///{directory / 'probe.db'}",
        "receiver": {"secrets": ["whsec_probe"]},
        "catalogs": {"masters": {"type": "drive", "root_folder_id": root_folder_id,
                                 "credentials_file": str(key_file), "api_endpoint": drive.api_endpoint}},
        "routes": [{"codes": ["*"], "catalog": "masters"}],
    }
    path = directory / "probe.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.mark.parametrize("problem", ["missing root", "revoked key", "disabled account"])
def test_check_config_probe_fails_with_a_clear_message(stack: Stack, tmp_path: Path, problem: str) -> None:
    with run_drive_double() as own:  # refusing every token must not touch the module's double
        drive = stack.drive if problem != "disabled account" else own
        root = drive.add_folder("Masters") if problem != "missing root" else "1NoSuchFolderId"
        key_file = drive.write_service_account(tmp_path)
        if problem == "revoked key":
            key_file = foreign_service_account(drive, tmp_path)
        if problem == "disabled account":
            drive.refuse_all_tokens()

        result = fulfiller("check-config", "--probe", "--config", str(probe_config(tmp_path, drive, root, key_file)))

    assert result.returncode == 2, result.stdout + result.stderr
    [failed] = [line.strip() for line in result.stdout.splitlines() if "FAILED" in line]
    expected = {
        "missing root": f"masters: FAILED: drive: root_folder_id '1NoSuchFolderId' not found, or not shared with "
                        f"{SERVICE_ACCOUNT}",
        "revoked key": "masters: FAILED: drive: get ",
        "disabled account": "masters: FAILED: drive: get ",
    }[problem]
    assert failed.startswith(expected), failed
    if problem == "revoked key":
        assert "cannot obtain an access token" in failed and "invalid_grant" in failed
    if problem == "disabled account":
        assert "credentials rejected even after a token refresh (HTTP 401)" in failed
    assert "private_key" not in result.stdout + result.stderr
