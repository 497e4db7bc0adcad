"""Quota copies at the catalog's level: what is asked of Drive, and a copy that cannot be deleted.

End to end (a job delivered from a copy, the copy deleted after success and
failure) in tests/test_drive_quota_e2e.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from fulfiller.catalogs.base import CatalogError
from fulfiller.catalogs.drive import DriveCatalog
from fulfiller.catalogs.drive_api import load_credentials
from support.drive_double import DriveDouble
from support.masters import FIELDS, MP4


async def read_all(catalog: DriveCatalog, root: str) -> bytes:
    [master] = await catalog.find(FIELDS, "video")
    return b"".join([chunk async for chunk in catalog.stream(master)])


def leaf(drive: DriveDouble, root: str) -> str:
    return drive.add_folders(f"{FIELDS['code']}/v{FIELDS['variation']}/{FIELDS['locale']}", root)


async def test_a_read_only_catalog_never_asks_to_copy(drive: DriveDouble,
                                                     catalog_for: Callable[..., DriveCatalog]) -> None:
    root = drive.add_folder("Masters")
    drive.deny_download(drive.add_file("9x16.mp4", leaf(drive, root), MP4))
    with pytest.raises(CatalogError, match="catalogs.masters-drive.quota_copy_folder_id"):
        await read_all(catalog_for(root), root)
    assert drive.counts["copy"] == 0


async def test_a_copy_that_cannot_be_deleted_is_logged_not_raised(
        drive: DriveDouble, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = drive.add_folder("Masters")
    copies = drive.add_folder("Quota copies", ours=True)
    drive.deny_download(drive.add_file("9x16.mp4", leaf(drive, root), MP4))
    key_file = str(drive.write_service_account(tmp_path))
    catalog = DriveCatalog("masters-drive", root, load_credentials(key_file, write=True),
                           layout="{code}/v{variation}/{locale}/{aspect}", api_endpoint=drive.api_endpoint,
                           quota_copy_folder_id=copies)
    drive.after("copy", 1, lambda: [setattr(i, "ours", False) for i in drive.items.values()])  # taken from us
    try:
        with caplog.at_level(logging.WARNING, logger="fulfiller.catalogs.drive_copies"):
            assert await read_all(catalog, root) == MP4
    finally:
        await catalog.aclose()
    assert [h.status for h in drive.hits_of("delete")] == [403]
    assert any("delete it by hand" in r.getMessage() for r in caplog.records)
