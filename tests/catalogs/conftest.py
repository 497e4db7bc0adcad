"""Fixtures shared by the catalog tests: moto's server, the Drive double, and a messy folder of masters each catalog type must
read the same way (names as creative teams write them, matched by the layout's last segment as a pattern)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fulfiller.catalogs.drive import DriveCatalog
from fulfiller.catalogs.drive_api import load_credentials
from fulfiller.config import DEFAULT_LAYOUT
from support.drive_double import DriveDouble, run_drive_double
from support.moto_server import aws_test_env, moto_endpoint

__all__ = ["aws_test_env", "moto_endpoint"]

MESSY_FOLDER = "HRT-1212"
# Directly in MESSY_FOLDER; "old/9x16.mp4" is in a subfolder, which no pattern of the folder reaches.
MESSY_NAMES = (
    "HRT-1212_final_1080x1920.mp4",
    "HRT-1212_final_1080x1080.mp4",
    "HRT-1212_final_1080x1920.mp4.part",
    "Story 9x16 v2 FINAL.mov",
    "Story 4x5 v2 FINAL.mov",
    "9_16.mp4",
    "9-16.webm",
    "notes.txt",
)
MESSY_SUBFOLDER_FILE = "old/9x16.mp4"

# Row id -> (layout, aspect asked, the names found with the aspect each spells) for the folder above.
MESSY_CASES: dict[str, tuple[str, str, list[tuple[str, str | None]]]] = {
    "pixels-9x16": ("{code}/{code}_*_{aspect}", "9x16", [("HRT-1212_final_1080x1920.mp4", "9x16")]),
    "pixels-1x1": ("{code}/{code}_*_{aspect}", "1x1", [("HRT-1212_final_1080x1080.mp4", "1x1")]),
    "story": ("{code}/Story*{aspect}*", "9x16", [("Story 9x16 v2 FINAL.mov", "9x16")]),
    "story-4x5": ("{code}/Story*{aspect}*", "4x5", [("Story 4x5 v2 FINAL.mov", "4x5")]),
    "spellings": ("{code}/{aspect}", "9x16", [("9_16.mp4", "9x16"), ("9-16.webm", "9x16")]),
    "spellings-none": ("{code}/{aspect}", "4x5", []),
    "no-aspect": ("{code}/{code}*", "9x16",
                  [("HRT-1212_final_1080x1080.mp4", None), ("HRT-1212_final_1080x1920.mp4", None)]),
}


@pytest.fixture
def messy_files() -> dict[str, bytes]:
    """The messy folder's files by path from the catalog's root; each holds its own name, so sizes differ
    (finding never reads the bytes)."""
    paths = [f"{MESSY_FOLDER}/{name}" for name in (*MESSY_NAMES, MESSY_SUBFOLDER_FILE)]
    return {path: path.encode() for path in paths}


def pytest_generate_tests(metafunc: Any) -> None:
    """A test asking for ``messy_case`` runs once per row of MESSY_CASES."""
    if "messy_case" in metafunc.fixturenames:
        metafunc.parametrize("messy_case", list(MESSY_CASES.values()), ids=list(MESSY_CASES))


@pytest.fixture(scope="module")
def served_drive() -> Iterator[DriveDouble]:
    with run_drive_double() as double:
        yield double


@pytest.fixture
def drive(served_drive: DriveDouble) -> DriveDouble:
    served_drive.reset()
    return served_drive


@pytest.fixture
async def catalog_for(drive: DriveDouble, tmp_path: Path) -> AsyncIterator[Callable[..., DriveCatalog]]:
    """Make catalogs on the double; each has its own credentials."""
    key_file = drive.write_service_account(tmp_path)
    made: list[DriveCatalog] = []

    def make(root: str, **kw: Any) -> DriveCatalog:
        options: dict[str, Any] = {
            "layout": DEFAULT_LAYOUT,
            "api_endpoint": drive.api_endpoint,
            **kw,
        }
        catalog = DriveCatalog("masters-drive", root, load_credentials(str(key_file)), **options)
        made.append(catalog)
        return catalog

    yield make
    for catalog in made:
        await catalog.aclose()
