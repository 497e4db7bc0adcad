"""Drive's per-file download quota, end to end through a real ``fulfiller serve``.

A master that meets ``downloadQuotaExceeded`` is copied into the catalog's
``quota_copy_folder_id`` (a folder the service account owns), the copy is
streamed in its place and deleted afterwards, also when the job fails. A
catalog without the key fails the job with a reason naming it, unless another
candidate of the same name can be delivered. The Drive double enforces what
Drive does: copying and deleting need the full ``drive`` scope, a copy lands
only in a folder the service account may write to, and only what it owns can
be deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from support.drive_double import DRIVE, DriveDouble, run_drive_double
from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.masters import media, moov_at_end
from support.netguard import block_network
from support.platform import PlatformDouble, completion, new_token, run_platform, source_requested, storage_key

JOB_TIMEOUT_S = 30
MARK = "(fulfiller quota copy)"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


@dataclass
class Stack:
    proc: FulfillerProcess
    platform: PlatformDouble
    drive: DriveDouble
    copying_root: str  # catalog drive-copying (codes CP-*), with quota_copy_folder_id
    plain_root: str  # catalog drive-plain (codes PL-*), without
    copies: str  # the folder copies go to

    def leaf(self, code: str) -> str:
        root = self.copying_root if code.startswith("CP-") else self.plain_root
        return self.drive.add_folders(f"{code}/v1/en", root)

    def run_oss(self, code: str) -> tuple[dict[str, Any], str, str]:
        """Deliver an OSS request for ``code``'s 9x16 and wait for its job: the job, storage key and token."""
        key, token = storage_key(code, "9x16", "video"), new_token()
        event = source_requested(code, kind="video", key=key, upload_url=self.platform.presign(key),
                                 callback_url=self.platform.callback_url(token), aspect="9x16")
        return self.proc.wait_for_job(self.proc.deliver(event), timeout=JOB_TIMEOUT_S), key, token

    def copies_left(self) -> list[str]:
        return [i.name for i in self.drive.items.values() if MARK in i.name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("drive-quota")
    with run_drive_double() as drive, run_platform(root / "platform") as platform:
        copying_root, plain_root = drive.add_folder("Masters"), drive.add_folder("More masters")
        copies = drive.add_folder("Quota copies", ours=True)
        key_file = drive.write_service_account(root)
        port = urlsplit(platform.base_url).port
        catalog = {"type": "drive", "credentials_file": str(key_file), "api_endpoint": drive.api_endpoint}
        config = {
            "server": {"host": "127.0.0.1"},
            "worker": fast_worker([f"127.0.0.1:{port}"], [f"127.0.0.1:{port}"]),
            "catalogs": {
                "drive-copying": {**catalog, "root_folder_id": copying_root, "quota_copy_folder_id": copies},
                "drive-plain": {**catalog, "root_folder_id": plain_root},
            },
            "routes": [{"codes": ["CP-*"], "catalog": "drive-copying"}, {"codes": ["PL-*"], "catalog": "drive-plain"}],
        }
        with FulfillerProcess(root / "fulfiller", config) as proc:
            yield Stack(proc, platform, drive, copying_root, plain_root, copies)


def new_code(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


def test_a_master_over_its_quota_is_delivered_from_a_copy_then_the_copy_is_deleted(stack: Stack) -> None:
    code = new_code("CP")
    data = moov_at_end(3 * 1024 * 1024)  # measuring it reads its moov by range: from the copy too
    original = stack.drive.add_file("9x16.mp4", stack.leaf(code), data, mime_type="video/mp4")
    stack.drive.deny_download(original)
    start = len(stack.drive.hits)

    job, key, token = stack.run_oss(code)

    assert job["status"] == "completed", job
    assert stack.platform.stored(key).read_bytes() == data
    [callback] = stack.platform.callbacks(token)
    assert callback.body == completion(key, data, "mp4", None)
    assert job["measured"]["aspect"] == "9x16"
    hits = stack.drive.hits[start:]
    [copy] = [h for h in hits if h.kind == "copy"]
    assert (copy.status, copy.file_id, copy.params.get("supportsAllDrives")) == (200, original, "true")
    copy_id = stack.drive.deleted[-1]
    media_hits = [h for h in hits if h.kind == "media"]
    assert [(h.file_id, h.status) for h in media_hits[:1]] == [(original, 403)]
    assert {h.file_id for h in media_hits[1:]} == {copy_id} and len(media_hits) == 4  # stream + 2 ranges
    assert [h.status for h in hits if h.kind == "delete"] == [204]
    assert stack.copies_left() == [] and original in stack.drive.items
    assert any(DRIVE in scopes for scopes in stack.drive.scopes.values())


def test_the_copy_is_deleted_when_the_job_fails(stack: Stack) -> None:
    code = new_code("CP")
    original = stack.drive.add_file("9x16.mp4", stack.leaf(code), media("9x16.mp4"), mime_type="video/mp4")
    stack.drive.deny_download(original)
    stack.drive.corrupt_checksum(original, "sha256Checksum")  # the bytes will not match what Drive lists

    job, key, token = stack.run_oss(code)

    assert job["status"] == "failed" and "sha256" in job["error"].lower(), job
    assert stack.platform.stored(key) is None and stack.platform.callbacks(token) == []
    assert stack.copies_left() == []


def test_without_a_copy_folder_the_job_fails_naming_the_key(stack: Stack) -> None:
    code = new_code("PL")
    stack.drive.deny_download(stack.drive.add_file("9x16.mp4", stack.leaf(code), media("9x16.mp4")))

    job, key, token = stack.run_oss(code)

    assert job["status"] == "failed", job
    assert "downloadQuotaExceeded" in job["error"]
    assert "catalogs.drive-plain.quota_copy_folder_id" in job["error"]
    assert stack.platform.callbacks(token) == [] and stack.copies_left() == []


def test_a_master_over_its_quota_gives_way_to_the_next_of_the_same_name(stack: Stack) -> None:
    code = new_code("PL")
    leaf = stack.leaf(code)
    stack.drive.deny_download(stack.drive.add_file("9x16.mp4", leaf, media("9x16.mp4")))  # ranked first
    data = media("9x16.mov")
    stack.drive.add_file("9x16.mov", leaf, data)

    job, key, token = stack.run_oss(code)

    assert job["status"] == "completed", job
    assert stack.platform.stored(key).read_bytes() == data
    assert "9x16.mp4 cannot be read" in attempts(job, "resolve")[0]["detail"]
