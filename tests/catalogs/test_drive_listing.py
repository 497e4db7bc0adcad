"""DriveCatalog's folder listings (one per folder per resolve), messy names, and the ranged reads a measurement
makes, against the Drive v3 double through the real google-api-python-client."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable, Listing, Listings, Master
from fulfiller.catalogs.drive import DriveCatalog
from support.drive_double import DriveDouble, Hit
from support.masters import FIELDS, MEDIA, MP4
from support.netguard import block_network

MOV = (MEDIA / "9x16.mov").read_bytes()
LEAF = "HRT-001/v2/en_US"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    block_network(monkeypatch)


def children_listings(drive: DriveDouble) -> list[Hit]:
    """Listings of a folder's children (not the folder walk's look-ups by name)."""
    return [h for h in drive.hits_of("list") if "name =" not in h.params["q"]]


async def one_master(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> tuple[DriveCatalog, Master]:
    root = drive.add_folder("Masters")
    drive.add_file("9x16.mp4", drive.add_folders(LEAF, root), MP4)
    catalog = catalog_for(root)
    [master] = await catalog.find(FIELDS, "video")
    return catalog, master


async def test_messy_names_are_matched_by_the_layouts_pattern(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], messy_files: dict[str, bytes],
    messy_case: tuple[str, str, list[tuple[str, str | None]]],
) -> None:
    root = drive.add_folder("Masters")
    for path, data in messy_files.items():
        folder, _, name = path.rpartition("/")
        drive.add_file(name, drive.add_folders(folder, root), data)
    layout, aspect, found = messy_case

    masters = await catalog_for(root, layout=layout).find({**FIELDS, "code": "HRT-1212", "aspect": aspect}, "video")

    assert [(m.name, m.named_aspect) for m in masters] == found
    for m in masters:
        assert (m.object, m.size) == (f"drive:HRT-1212/{m.name}", len(messy_files[f"HRT-1212/{m.name}"]))


async def test_list_folder_gives_files_with_sizes_and_subfolders(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root = drive.add_folder("Masters")
    folder = drive.add_folder("HRT-1", root)
    older = drive.add_file("9x16.mp4", folder, b"old", modified_time="2023-05-01T10:00:00.000Z")
    newer = drive.add_file("9x16.mp4", folder, b"newer", modified_time="2023-06-01T10:00:00.000Z")
    final = drive.add_file("final-cut.mov", drive.add_folder("Finals", root), MOV)
    drive.add_shortcut("4x5.mov", folder, final)  # followed: named as a master
    drive.add_shortcut("brief.pdf", folder, final)  # not followed: only a media file can be a master
    drive.add_google_doc("notes", folder)
    drive.add_file("gone.mp4", folder, b"x", trashed=True)
    drive.add_folder("old", folder)
    drive.add_shortcut("agency", folder, drive.add_folder("Agency", root))  # walked as a folder
    drive.add_folder("binned", folder, trashed=True)
    catalog = catalog_for(root)

    listing = await catalog.list_folder(["HRT-1"])

    # One name twice (Drive allows it): newest first.
    assert [(m.name, m.ref, m.size) for m in listing.files] == [
        ("4x5.mov", final, len(MOV)), ("9x16.mp4", newer, 5), ("9x16.mp4", older, 3)]
    assert [m.object for m in listing.files] == ["drive:HRT-1/4x5.mov", "drive:HRT-1/9x16.mp4", "drive:HRT-1/9x16.mp4"]
    assert listing.folders == ["agency", "old"]
    assert [h.file_id for h in drive.hits_of("get")] == [root, final]  # the root, and the one shortcut followed
    assert len(children_listings(drive)) == 1  # files and folders in one listing
    assert (await catalog.list_folder([])).folders == ["Agency", "Finals", "HRT-1"]
    assert await catalog.list_folder(["HRT-404"]) == Listing()
    assert await catalog.list_folder(["HRT-1", "agency"]) == Listing()  # there, and empty


async def test_a_resolve_lists_its_folder_once_for_every_aspect(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    root = drive.add_folder("Masters")
    leaf = drive.add_folders(LEAF, root)
    for aspect in ("9x16", "4x5", "1x1"):
        drive.add_file(f"{aspect}.mp4", leaf, MP4)
    catalog = catalog_for(root)
    listings = Listings()

    found = [await catalog.find({**FIELDS, "aspect": aspect}, "video", listings) for aspect in ("4x5", "1x1", "9x16")]

    assert [m.name for [m] in found] == ["4x5.mp4", "1x1.mp4", "9x16.mp4"]
    assert len(children_listings(drive)) == 1
    await catalog.find(FIELDS, "video")  # another resolve
    assert len(children_listings(drive)) == 2


async def test_read_range_is_one_ranged_download(drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]) -> None:
    catalog, master = await one_master(drive, catalog_for)

    assert await catalog.read_range(master, 1000, 4096) == MP4[1000:5096]
    assert await catalog.read_range(master, 0, 16) == MP4[:16]
    end = len(MP4)
    assert await catalog.read_range(master, end - 10, 100) == MP4[-10:]  # short at the end
    assert [h.range for h in drive.hits_of("media")] == ["bytes=1000-5095", "bytes=0-15", f"bytes={end - 10}-{end + 89}"]
    assert await catalog.read_range(master, end, 100) == b""
    assert drive.counts["media"] == 3  # past the end: nothing to ask


async def test_a_download_quota_on_a_range_read_is_permanent(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.deny_download(master.ref, "downloadQuotaExceeded")

    with pytest.raises(CatalogError, match="^drive: downloadQuotaExceeded: .*download quota") as caught:
        await catalog.read_range(master, 0, 16)
    assert not isinstance(caught.value, CatalogUnavailable)
    assert drive.counts["media"] == 1


@pytest.mark.parametrize(("status", "reason", "retry_after"),
                         [(429, "rateLimitExceeded", 3), (403, "userRateLimitExceeded", None),
                          (503, "backendError", 7)])
async def test_throttling_and_outages_on_a_range_read_are_unavailable_with_retry_after(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog], status: int, reason: str, retry_after: int | None
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.fail_next(1, status, reason, retry_after=retry_after, kind="media")

    with pytest.raises(CatalogUnavailable, match=f"HTTP {status} {reason}") as caught:
        await catalog.read_range(master, 0, 16)
    assert caught.value.retry_after == retry_after
    assert await catalog.read_range(master, 0, 16) == MP4[:16]  # the engine's next try


async def test_a_range_read_that_cannot_be_served_as_asked_fails(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for)

    drive.cut_download(master.ref, after_bytes=100)
    with pytest.raises(CatalogUnavailable, match="read drive:HRT-001/v2/en_US/9x16.mp4"):
        await catalog.read_range(master, 0, 4096)
    drive.ignore_ranges()
    with pytest.raises(CatalogError, match="ignored a Range request"):
        await catalog.read_range(master, 0, 16)
    drive.delete(master.ref)
    with pytest.raises(CatalogUnavailable, match="vanished"):
        await catalog.read_range(master, 0, 16)


async def test_a_range_read_refreshes_an_expired_token_once(
    drive: DriveDouble, catalog_for: Callable[..., DriveCatalog]
) -> None:
    catalog, master = await one_master(drive, catalog_for)
    drive.expire_tokens()

    assert await catalog.read_range(master, 0, 16) == MP4[:16]
    assert (drive.counts["media 401"], drive.counts["media 206"]) == (1, 1)
