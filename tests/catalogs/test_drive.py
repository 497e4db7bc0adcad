"""DriveCatalog against a strict Drive v3 double, through the real google-api-python-client.

Nothing here reaches the network: the double listens on loopback and every
other connection or name lookup fails (see support.netguard).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable, Master
from fulfiller.catalogs.drive import DriveCatalog
from fulfiller.catalogs.drive_api import DriveApi, load_credentials
from fulfiller.catalogs.drive_folders import DriveFolders
from fulfiller.config import DEFAULT_LAYOUT, DriveCatalogConfig
from support.drive_double import DriveDouble
from support.masters import FIELDS, MEDIA, MP4
from support.netguard import NetworkBlocked, block_network

MOV = (MEDIA / "9x16.mov").read_bytes()
WEBM = (MEDIA / "9x16.webm").read_bytes()
LEAF = "HRT-001/v2/en_US"
BLOB = random.Random(7).randbytes(5 * 1024 * 1024 + 123)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


async def read_all(catalog: DriveCatalog, master: Master, **kw: Any) -> bytes:
    return b"".join([chunk async for chunk in catalog.stream(master, **kw)])


def folder_lookups(drive: DriveDouble) -> int:
    """Requests that walk the tree: name lookups under a parent, and gets of the root."""
    return len([h for h in drive.hits_of("list") if "name =" in h.params["q"]]) + len(drive.hits_of("get"))


def my_drive_leaf(drive: DriveDouble) -> tuple[str, str]:
    root = drive.add_folder("Masters")
    return root, drive.add_folders(LEAF, root)


async def one_master(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], name: str = "9x16.mp4", data: bytes = MP4, *,
    fields: dict[str, Any] = FIELDS, kind: str = "video", **options: Any
) -> tuple[DriveCatalog, Master]:
    """One file in a My Drive leaf, a catalog on its root (``options`` for it), and the master that catalog finds."""
    root, leaf = my_drive_leaf(drive)
    drive.add_file(name, leaf, data)
    catalog = catalog_for(root, **options)
    [master] = await catalog.find(fields, kind)
    return catalog, master


# -- finding ----------------------------------------------------------------------------


async def test_find_in_my_drive_folder(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    file_id = drive.add_file("9x16.mp4", leaf, MP4, mime_type="video/mp4")
    drive.add_file("4x5.mp4", leaf, (MEDIA / "4x5.mp4").read_bytes(), mime_type="video/mp4")

    [master] = await catalog_for(root).find(FIELDS, "video")

    assert master.catalog == "masters-drive"
    assert master.object == "drive:HRT-001/v2/en_US/9x16.mp4"
    assert (master.name, master.ref, master.size) == ("9x16.mp4", file_id, len(MP4))
    assert master.md5 == hashlib.md5(MP4).hexdigest()
    assert master.sha256 == hashlib.sha256(MP4).hexdigest()
    for hit in drive.hits_of("list"):
        assert hit.params["supportsAllDrives"] == hit.params["includeItemsFromAllDrives"] == "true"
        assert "corpora" not in hit.params  # a My Drive folder: the default corpus


async def test_find_in_a_shared_drive(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    shared = drive.add_shared_drive("Creative Masters")
    file_id = drive.add_file("9x16.mp4", drive.add_folders(LEAF, shared), MP4)

    catalog = catalog_for(shared)
    [master] = await catalog.find(FIELDS, "video")

    assert master.ref == file_id
    assert await read_all(catalog, master) == MP4
    for hit in drive.hits_of("list"):
        assert hit.params["corpora"] == "drive" and hit.params["driveId"] == shared
    assert all(h.params["supportsAllDrives"] == "true" for h in drive.hits_of("get") + drive.hits_of("media"))


async def test_a_shortcut_is_followed_to_its_target(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root, leaf = my_drive_leaf(drive)
    elsewhere = drive.add_folder("Finals", root)
    target = drive.add_file("final-cut.mov", elsewhere, MOV)
    drive.add_shortcut("9x16.mov", leaf, target)

    catalog = catalog_for(root)
    [master] = await catalog.find(FIELDS, "video")

    assert (master.ref, master.name, master.size) == (target, "9x16.mov", len(MOV))
    assert master.md5 == hashlib.md5(MOV).hexdigest()
    assert await read_all(catalog, master) == MOV


async def test_a_folder_shortcut_into_a_shared_drive(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root = drive.add_folder("Masters")
    shared = drive.add_shared_drive("Agency")
    code_folder = drive.add_folder("HRT-001 (agency)", shared)
    file_id = drive.add_file("9x16.mp4", drive.add_folders("v2/en_US", code_folder), MP4)
    drive.add_shortcut("HRT-001", root, code_folder)

    [master] = await catalog_for(root).find(FIELDS, "video")

    assert master.ref == file_id
    leaf_listing = drive.hits_of("list")[-1]
    assert (leaf_listing.params.get("corpora"), leaf_listing.params.get("driveId")) == ("drive", shared)


async def test_trashed_decoys_are_skipped(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root = drive.add_folder("Masters")
    trashed_v2 = drive.add_folders("HRT-001/v2", root)
    drive.trash(trashed_v2)
    drive.add_file("9x16.mp4", drive.add_folders("en_US", trashed_v2), b"old folder")
    leaf = drive.add_folders("en_US", drive.add_folder("v2", drive.add_folders("HRT-001", root)))
    drive.add_file("9x16.mp4", leaf, b"trashed master", trashed=True)
    drive.add_shortcut("9x16.webm", leaf, drive.add_file("gone.webm", root, WEBM, trashed=True))
    live = drive.add_file("9x16.mov", leaf, MOV)

    masters = await catalog_for(root).find(FIELDS, "video")

    assert [m.ref for m in masters] == [live]


async def test_same_stem_choice_is_deterministic(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    webm = drive.add_file("9x16.webm", leaf, WEBM)
    mov = drive.add_file("9x16.MOV", leaf, MOV)
    older = drive.add_file("9x16.mp4", leaf, MP4, modified_time="2023-05-01T10:00:00.000Z")
    newer = drive.add_file("9x16.mp4", leaf, MP4, modified_time="2023-06-01T10:00:00.000Z")
    drive.add_file("9x16.gif", leaf, b"GIF89a")  # not a video extension

    catalog = catalog_for(root)
    first = await catalog.find(FIELDS, "video")
    again = await catalog.find(FIELDS, "video")

    assert [m.ref for m in first] == [newer, older, mov, webm]
    assert [m.ref for m in again] == [m.ref for m in first]


async def test_paging_past_a_thousand_items(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    for i in range(1_200):
        drive.add_file(f"decoy-{i:04d}.mp4", leaf, b"x")
    file_id = drive.add_file("9x16.mp4", leaf, MP4)

    [master] = await catalog_for(root).find(FIELDS, "video")

    assert master.ref == file_id
    leaf_pages = [h for h in drive.hits_of("list") if "name =" not in h.params["q"]]
    assert len(leaf_pages) == 2
    assert leaf_pages[0].params["pageSize"] == "1000"
    assert "pageToken" in leaf_pages[1].params


async def test_a_google_doc_named_like_a_master_is_ignored(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_google_doc("9x16.mp4", leaf)
    drive.add_google_doc("4x5.mp4", leaf)
    webm = drive.add_file("9x16.webm", leaf, WEBM)

    catalog = catalog_for(root)
    assert [m.ref for m in await catalog.find(FIELDS, "video")] == [webm]
    assert await catalog.find({**FIELDS, "aspect": "4x5"}, "video") == []


async def test_images_match_only_image_extensions(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_file("9x16.mp4", leaf, MP4)
    jpg = drive.add_file("9x16.JPG", leaf, (MEDIA / "9x16.jpg").read_bytes())
    png = drive.add_file("9x16.png", leaf, (MEDIA / "9x16.png").read_bytes())

    assert [m.ref for m in await catalog_for(root).find(FIELDS, "image")] == [jpg, png]


async def test_names_with_quotes_are_escaped(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root = drive.add_folder("Masters")
    code = "O'Brien \"Co\""
    file_id = drive.add_file("9x16.mp4", drive.add_folders(f"{code}/v2/en_US", root), MP4)

    [master] = await catalog_for(root).find({**FIELDS, "code": code}, "video")

    assert master.ref == file_id
    assert master.object == f"drive:{code}/v2/en_US/9x16.mp4"


async def test_missing_creative_is_not_found(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_shortcut("9x16.mp4", leaf, "f99999")  # its target was deleted

    catalog = catalog_for(root)
    assert await catalog.find(FIELDS, "video") == []
    assert await catalog.find({**FIELDS, "code": "HRT-404"}, "video") == []
    assert drive.counts["get 404"] == 1


@pytest.mark.parametrize("code", ["HRT/001", "O'Brien\\Co", "..", "C" * 300, "x\0y"])
async def test_a_code_that_is_not_one_safe_segment_makes_no_request(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], code: str
) -> None:
    root = drive.add_folder("Masters")
    drive.add_file("9x16.mp4", drive.add_folders("HRT/001/v2/en_US", root), MP4)  # what a split "HRT/001" finds

    assert await catalog_for(root).find({**FIELDS, "code": code}, "video") == []
    assert drive.hits == []  # not even a token


async def test_thousands_of_slashes_build_no_folder_walk(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    # Split on its "/", this code was one folder-walk task per prefix: work and memory grew with its square.
    code = "/".join(["s"] * 5000)
    catalog = catalog_for(drive.add_folder("Masters"))
    loop = asyncio.get_running_loop()
    created: list[Any] = []

    def count_tasks(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(count_tasks)
    try:
        started = time.perf_counter()
        assert await catalog.find({**FIELDS, "code": code}, "video") == []
        elapsed = time.perf_counter() - started
    finally:
        loop.set_task_factory(None)

    assert created == []
    assert drive.hits == []
    assert elapsed < 1.0  # a generous bound: the work is one scan of the code


async def test_a_missing_root_is_an_operator_error(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    with pytest.raises(CatalogError, match="root_folder_id 'nope' not found, or not shared with fulfiller-test@"):
        await catalog_for("nope").find(FIELDS, "video")


# -- the folder cache -------------------------------------------------------------------


async def test_the_second_find_makes_no_folder_lookups(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, _ = await one_master(drive, catalog_for)

    walked, listed = folder_lookups(drive), drive.counts["list"]
    assert walked == 4  # the root, then HRT-001, v2, en_US
    [master] = await catalog.find(FIELDS, "video")

    assert master.name == "9x16.mp4"
    assert folder_lookups(drive) == walked
    assert drive.counts["list"] == listed + 1  # only the leaf's listing


async def test_a_burst_walks_the_tree_once(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_file("9x16.mp4", leaf, MP4)
    catalog = catalog_for(root)

    results = await asyncio.gather(*(catalog.find(FIELDS, "video") for _ in range(8)))

    assert all(len(r) == 1 for r in results)
    assert folder_lookups(drive) == 4


async def test_the_cache_expires(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    catalog, _ = await one_master(drive, catalog_for, folder_cache_s=0)
    await catalog.find(FIELDS, "video")

    assert folder_lookups(drive) == 4 + 3  # the root stays known; the folders are walked again


async def test_a_stale_cached_folder_is_walked_again(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_file("9x16.mp4", leaf, MP4)
    catalog = catalog_for(root)
    await catalog.find(FIELDS, "video")

    drive.delete(leaf)  # an operator replaced the folder
    replacement = drive.add_file("9x16.mp4", drive.add_folders(LEAF, root), MOV)
    [master] = await catalog.find(FIELDS, "video")

    assert master.ref == replacement


# -- streaming --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kind"),
    [
        ("9x16.mp4", "video"),
        ("4x5.mov", "video"),
        ("1x1.webm", "video"),
        ("3x4.mkv", "video"),
        ("9x16_faststart.mp4", "video"),
        ("9x16.jpg", "image"),
        ("1x1.png", "image"),
        ("4x5.webp", "image"),
        ("3x4.avif", "image"),
    ],
)
async def test_streams_the_exact_bytes(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], filename: str, kind: str
) -> None:
    data = (MEDIA / filename).read_bytes()
    aspect = filename.split(".")[0].split("_")[0]

    catalog, master = await one_master(drive, catalog_for, filename.replace("_faststart", ""), data,
                                       fields={**FIELDS, "aspect": aspect}, kind=kind)

    assert await read_all(catalog, master, chunk_size=1024) == data
    assert drive.hits_of("media")[0].range is None


async def test_streams_a_large_blob_in_chunks(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    catalog, master = await one_master(drive, catalog_for, "9x16.mkv", BLOB)

    chunks = [chunk async for chunk in catalog.stream(master, chunk_size=256 * 1024)]

    assert b"".join(chunks) == BLOB
    assert max(len(c) for c in chunks) <= 256 * 1024
    assert len(chunks) >= len(BLOB) // (256 * 1024)


async def test_stream_from_an_offset(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    catalog, master = await one_master(drive, catalog_for, "9x16.mkv", BLOB)

    assert await read_all(catalog, master, start=4_000_000) == BLOB[4_000_000:]
    assert drive.hits_of("media")[-1].range == "bytes=4000000-"
    assert await read_all(catalog, master, start=len(BLOB)) == b""


async def test_a_cut_connection_resumes_with_range(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for, "9x16.mkv", BLOB)
    drive.cut_download(master.ref, after_bytes=1_000_000, times=2)

    data = await read_all(catalog, master, chunk_size=64 * 1024)

    assert data == BLOB  # whole, and the md5 check at the end passed
    ranges = [h.range for h in drive.hits_of("media")]
    assert len(ranges) == 3 and ranges[0] is None
    offsets = [int(r.removeprefix("bytes=").removesuffix("-")) for r in ranges[1:] if r]
    assert 0 < offsets[0] <= 1_000_000 < offsets[1] <= 2_000_000


async def test_a_proxy_that_ignores_range_is_refused(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for, "9x16.mkv", BLOB)
    drive.ignore_ranges()

    with pytest.raises(CatalogError, match="ignored a Range request"):
        await read_all(catalog, master, start=5000)  # rather than sending the whole file as its tail
    assert drive.counts["media"] == 1


async def test_too_many_cuts_give_up(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    catalog, master = await one_master(drive, catalog_for, "9x16.mkv", BLOB, max_resumes=2)
    drive.cut_download(master.ref, after_bytes=10_000, times=100)

    with pytest.raises(CatalogUnavailable, match="cut 3 times"):
        await read_all(catalog, master, chunk_size=4096)
    assert drive.counts["media"] == 3


async def test_md5_mismatch_is_caught_at_the_end(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    root, leaf = my_drive_leaf(drive)
    file_id = drive.add_file("9x16.mp4", leaf, MP4)
    drive.omit_checksum(file_id, "sha256Checksum")  # no SHA-256 for the upload to check: the md5 is the check
    drive.corrupt_checksum(file_id, "md5Checksum")
    catalog = catalog_for(root)
    [master] = await catalog.find(FIELDS, "video")
    assert master.sha256 is None

    received = bytearray()
    with pytest.raises(CatalogError, match="md5 mismatch"):
        async for chunk in catalog.stream(master):
            received += chunk
    assert bytes(received) == MP4  # every byte went out, and still the stream failed


async def test_a_file_deleted_after_find_is_unavailable(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.delete(master.ref)

    with pytest.raises(CatalogUnavailable, match="vanished"):
        await read_all(catalog, master)


@pytest.mark.parametrize(
    ("reason", "explained"),
    [
        ("downloadQuotaExceeded", "download quota is exhausted; try later or copy it"),
        ("cannotDownloadFile", "refuses to serve this file"),
        ("cannotDownloadAbusiveFile", "flagged this file as malware or abuse"),
    ],
)
async def test_download_refusals_are_permanent_and_explained(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], reason: str, explained: str
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.deny_download(master.ref, reason)

    with pytest.raises(CatalogError, match=f"^drive: {reason}: .*{explained}") as caught:
        await read_all(catalog, master)
    assert not isinstance(caught.value, CatalogUnavailable)
    assert "HRT-001/v2/en_US/9x16.mp4" in str(caught.value)
    assert drive.counts["media"] == 1  # not retried


# -- throttling, outages and tokens -----------------------------------------------------


async def test_429_is_unavailable_after_one_try_with_its_retry_after(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_file("9x16.mp4", leaf, MP4)
    drive.fail_next(1, 429, "rateLimitExceeded", retry_after=3, kind="list")
    catalog = catalog_for(root)

    with pytest.raises(CatalogUnavailable, match="HTTP 429 rateLimitExceeded") as caught:
        await catalog.find(FIELDS, "video")
    assert caught.value.retry_after == 3  # for the engine's backoff, which waits at least this long
    assert drive.counts["list 429"] == drive.counts["list"] == 1

    [master] = await catalog.find(FIELDS, "video")  # the engine's next try
    assert master.name == "9x16.mp4"


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
async def test_403_rate_limits_on_download_are_unavailable_after_one_try(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], reason: str
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.fail_next(1, 403, reason, kind="media")

    with pytest.raises(CatalogUnavailable, match=f"HTTP 403 {reason}") as caught:
        await read_all(catalog, master)
    assert caught.value.retry_after is None  # Drive named no pause: the engine's backoff decides
    assert drive.counts["media 403"] == drive.counts["media"] == 1

    assert await read_all(catalog, master) == MP4


@pytest.mark.parametrize("kind", ["get", "list", "media"])
async def test_5xx_is_unavailable_after_one_try(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], kind: str
) -> None:
    root, leaf = my_drive_leaf(drive)
    drive.add_file("9x16.mp4", leaf, MP4)
    [master] = await catalog_for(root).find(FIELDS, "video")
    catalog = catalog_for(root)  # nothing cached: its find gets the root, then lists
    drive.fail_next(10, 503, "backendError", retry_after=7, kind=kind)
    before = drive.counts[kind]

    with pytest.raises(CatalogUnavailable, match="HTTP 503 backendError") as caught:
        if kind == "media":
            await read_all(catalog, master)
        else:
            await catalog.find(FIELDS, "video")
    assert caught.value.retry_after == 7
    assert drive.counts[kind] - before == 1


async def test_an_unreachable_drive_is_unavailable(tmp_path: Path, drive: DriveDouble) -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound once to learn a free number, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key_file = drive.write_service_account(tmp_path)
    catalog = DriveCatalog("d", "root", load_credentials(str(key_file)), layout=DEFAULT_LAYOUT,
                           api_endpoint=f"http://127.0.0.1:{port}/drive/v3/")

    with pytest.raises(CatalogUnavailable, match="get root") as caught:
        await catalog.find(FIELDS, "video")
    assert caught.value.retry_after is None
    assert drive.counts["token"] == 1  # the token endpoint (the double) answered; the API did not
    await catalog.aclose()


async def test_token_expiry_mid_run_refreshes_once(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    assert drive.counts["token"] == 1

    drive.expire_tokens()
    assert len(await catalog.find(FIELDS, "video")) == 1  # metadata path (google-auth-httplib2)
    assert (drive.counts["token"], drive.counts["list 401"]) == (2, 1)

    drive.expire_tokens()
    assert await read_all(catalog, master) == MP4  # download path (httpx)
    assert (drive.counts["token"], drive.counts["media 401"]) == (3, 1)


async def test_credentials_refused_after_a_refresh_are_permanent(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.refuse_all_tokens()

    with pytest.raises(CatalogError, match="credentials rejected even after a token refresh"):
        await catalog.find({**FIELDS, "code": "HRT-002"}, "video")
    assert (drive.counts["token"], drive.counts["get 401"] + drive.counts["list 401"]) == (2, 2)
    with pytest.raises(CatalogError, match="credentials rejected even after a token refresh"):
        await read_all(catalog, master)
    assert (drive.counts["token"], drive.counts["media 401"]) == (3, 2)


# -- configuration and probe ------------------------------------------------------------


async def test_from_config_and_probe(drive: DriveDouble, tmp_path: Path) -> None:
    shared = drive.add_shared_drive("Creative Masters")
    for name in ("a", "b", "c"):
        drive.add_folder(name, shared)
    cfg = DriveCatalogConfig(
        type="drive",
        root_folder_id=shared,
        credentials_file=str(drive.write_service_account(tmp_path)),
        api_endpoint=drive.api_endpoint,
    )
    catalog = DriveCatalog.from_config("masters-drive", cfg)

    description = await catalog.probe()
    await catalog.aclose()

    assert description.startswith(f"drive folder 'Creative Masters' ({shared}, shared drive {shared}): 3 items visible")
    assert "fulfiller-test@drive-double.iam.gserviceaccount.com" in description


async def test_application_default_credentials(
    drive: DriveDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(drive.write_service_account(tmp_path)))
    root = drive.add_folder("Masters")
    cfg = DriveCatalogConfig(type="drive", root_folder_id=root, api_endpoint=drive.api_endpoint.rstrip("/"))
    catalog = DriveCatalog.from_config("masters-drive", cfg)

    assert "'Masters'" in await catalog.probe()
    await catalog.aclose()


def test_bad_credentials_and_endpoint_are_reported(drive: DriveDouble, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(CatalogError, match="no usable credentials"):
        DriveCatalog.from_config(
            "d", DriveCatalogConfig(type="drive", root_folder_id="x", credentials_file=str(broken))
        )
    good = str(drive.write_service_account(tmp_path))
    cfg = DriveCatalogConfig(type="drive", root_folder_id="x", credentials_file=good, api_endpoint=drive.base_url)
    with pytest.raises(CatalogError, match="must end in /drive/v3/"):
        DriveCatalog.from_config("d", cfg)


async def test_building_for_google_makes_no_network_call(drive: DriveDouble, tmp_path: Path) -> None:
    key_file = str(drive.write_service_account(tmp_path))
    cfg = DriveCatalogConfig(type="drive", root_folder_id="x", credentials_file=key_file)
    catalog = DriveCatalog.from_config("d", cfg)  # static discovery: would raise NetworkBlocked otherwise
    await catalog.aclose()
    assert drive.hits == []


# -- the double itself is strict where Drive is -----------------------------------------


@pytest.fixture
def raw(drive: DriveDouble) -> Iterator[httpx.Client]:
    """A plain HTTP client holding a valid token, for poking the double directly."""
    drive.tokens["raw-token"] = time.time() + 60
    with httpx.Client(base_url=drive.api_endpoint, headers={"Authorization": "Bearer raw-token"}) as client:
        yield client


def test_double_hides_shared_drive_items_without_both_flags(drive: DriveDouble, raw: httpx.Client) -> None:
    shared = drive.add_shared_drive("S")
    file_id = drive.add_file("a.mp4", shared, MP4)
    q = {"q": f"'{shared}' in parents", "fields": "files(id)"}

    assert raw.get("files", params=q).json() == {"files": []}
    assert raw.get("files", params={**q, "supportsAllDrives": "true"}).json() == {"files": []}
    both = {**q, "supportsAllDrives": "true", "includeItemsFromAllDrives": "true"}
    assert raw.get("files", params=both).json() == {"files": [{"id": file_id}]}
    assert raw.get(f"files/{file_id}").status_code == 404
    assert raw.get(f"files/{file_id}", params={"alt": "media"}).status_code == 404
    assert raw.get(f"files/{file_id}", params={"supportsAllDrives": "true"}).status_code == 200


@pytest.mark.parametrize(
    "q",
    [
        "name contains 'x'",
        "'a' in parents or trashed = false",
        "name = 'unterminated",
        "name = 'bad \\n escape'",
        "trashed = maybe",
        "(trashed = false)",
        "trashed = false and",
    ],
)
def test_double_rejects_malformed_queries(raw: httpx.Client, q: str) -> None:
    response = raw.get("files", params={"q": q})
    assert response.status_code == 400
    assert response.json()["error"]["errors"][0]["reason"] == "invalid"


def test_double_checks_paging_fields_auth_and_ranges(drive: DriveDouble, raw: httpx.Client) -> None:
    folder = drive.add_folder("F")
    file_id = drive.add_file("a.mp4", folder, b"0123456789")
    assert raw.get("files", params={"pageSize": "1001"}).status_code == 400
    assert raw.get("files", params={"fields": "files(id"}).status_code == 400
    assert raw.get("files", params={"fields": "files(nonsense)"}).status_code == 400
    assert raw.get(f"files/{file_id}").json() == {  # Drive v3's default fields: ask, or go without
        "kind": "drive#file",
        "id": file_id,
        "name": "a.mp4",
        "mimeType": "application/octet-stream",
    }
    assert raw.get(f"files/{file_id}", params={"fields": "size,md5Checksum"}).json() == {
        "size": "10",
        "md5Checksum": hashlib.md5(b"0123456789").hexdigest(),
    }
    partial = raw.get(f"files/{file_id}", params={"alt": "media"}, headers={"Range": "bytes=3-5"})
    assert (partial.status_code, partial.content, partial.headers["content-range"]) == (206, b"345", "bytes 3-5/10")
    assert raw.get(f"files/{file_id}", params={"alt": "media"}, headers={"Range": "bytes=10-"}).status_code == 416
    assert raw.get(f"files/{file_id}", headers={"Authorization": "Bearer forged"}).status_code == 401


def test_network_beyond_loopback_is_blocked() -> None:
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("203.0.113.1", 443), timeout=1)
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("www.googleapis.com", 443)


# -- the folder cache's bound -----------------------------------------------------------


@pytest.fixture
async def folders_for(drive: DriveDouble, tmp_path: Path) -> AsyncIterator[Callable[[str, int], DriveFolders]]:
    """Folder trees on the double, each keeping at most ``cache_max`` folders for a minute."""
    api = DriveApi(load_credentials(str(drive.write_service_account(tmp_path))), api_endpoint=drive.api_endpoint)
    yield lambda root, cache_max: DriveFolders(api, root, cache_s=60, cache_max=cache_max)
    await api.aclose()


async def test_the_folder_cache_keeps_only_the_folders_used_last(
    drive: DriveDouble, folders_for: Callable[[str, int], DriveFolders]
) -> None:
    root = drive.add_folder("Masters")
    names = [f"CODE-{n:02}" for n in range(50)]
    for name in names:
        drive.add_folder(name, root)
    folders = folders_for(root, 8)
    for name in names:
        assert await folders.find((name,)) is not None

    assert [name for name in names if folders.cached((name,)) is not None] == names[-8:]


async def test_the_folder_cache_evicts_the_least_recently_used(
    drive: DriveDouble, folders_for: Callable[[str, int], DriveFolders]
) -> None:
    root = drive.add_folder("Masters")
    for name in "ABCD":
        drive.add_folder(name, root)
    folders = folders_for(root, 3)
    for name in "ABC":
        await folders.find((name,))
    await folders.find(("A",))  # a hit: A is now the one used last, B the least
    await folders.find(("D",))  # one too many: B goes
    walked = folder_lookups(drive)

    for name in "ACD":
        await folders.find((name,))
    assert folder_lookups(drive) == walked  # all three still known
    await folders.find(("B",))
    assert folder_lookups(drive) == walked + 1  # B is looked up again
