"""The resolve step measures each candidate's picture and, with ``worker.check_aspect``, never picks one whose
picture is not the aspect it would be delivered as (a local catalog over real media; S3 and Drive end to end in
tests/test_engine_e2e.py and tests/test_drive_e2e.py)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fulfiller.config import Config, parse_config
from fulfiller.delivery.resolve import Catalogs, Found, NotFound, find_master
from fulfiller.events import Coordinates, SourceRequest

MEDIA = Path(__file__).resolve().parents[1] / "media"
CASES = MEDIA / "cases"
FOLDER = "HRT-1/v2/en"


def config(tmp_path: Path, *, layout: str = "{code}/v{variation}/{locale}/{aspect}", check_aspect: bool = True,
           chunk_bytes: int = 1_048_576) -> Config:
    raw = {
        "state": f"sqlite:///{tmp_path / 'f.db'}",
        "receiver": {"secrets": ["s"]},
        "worker": {"check_aspect": check_aspect, "chunk_bytes": chunk_bytes},
        "catalogs": {"local": {"type": "local", "root": str(tmp_path / "masters"), "layout": layout}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    return parse_config(json.dumps(raw), env={})


def place(tmp_path: Path, files: dict[str, Path]) -> None:
    for name, source in files.items():
        target = tmp_path / "masters" / FOLDER / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


def request(aspect: str | None = None, family: str | None = None,
            accepted: tuple[str, ...] = ("4x5", "1x1", "3x4")) -> SourceRequest:
    return SourceRequest(
        coords=Coordinates("p-1", "HRT-1", 2, "en"), project_slug="acme", kind="video", aspect=aspect,
        family=family, accepted_aspects=accepted if family else (), upload_url="https://u.invalid/",
        storage_key="k", expires_at=datetime.now(UTC) + timedelta(hours=1), callback_url="https://c.invalid/")


async def resolve(cfg: Config, req: SourceRequest) -> Found | NotFound:
    catalogs = Catalogs(cfg)
    try:
        found = await find_master(req, cfg, catalogs)
        if isinstance(found, Found):
            await found.opened.aclose()
        return found
    finally:
        await catalogs.aclose()


@pytest.mark.parametrize("case", ["rotated_90.mp4", "rotated_270.mov"])
async def test_a_rotated_master_is_delivered_as_its_displayed_aspect(tmp_path: Path, case: str) -> None:
    place(tmp_path, {"9x16" + Path(case).suffix: CASES / case})
    found = await resolve(config(tmp_path), request("9x16"))
    assert isinstance(found, Found), found
    assert found.measured is not None
    assert found.measured.to_json()["aspect"] == "9x16" and found.measured.rotation in (90, 270)
    assert any("measured 180x320" in note for note in found.notes)


async def test_oss_skips_a_master_whose_picture_is_another_aspect(tmp_path: Path) -> None:
    place(tmp_path, {"9x16.mp4": CASES / "mislabelled" / "9x16.mp4"})
    found = await resolve(config(tmp_path), request("9x16"))
    assert isinstance(found, NotFound)
    assert found.reason == "aspect_mismatch:asked=9x16,measured=1x1"
    assert any("measures 1x1, not 9x16: passed over" in note for note in found.notes)


async def test_afs_goes_on_to_the_next_accepted_aspect(tmp_path: Path) -> None:
    place(tmp_path, {"4x5.mp4": MEDIA / "1x1.mp4", "1x1.webm": MEDIA / "1x1.webm"})
    found = await resolve(config(tmp_path), request(family="feed"))
    assert isinstance(found, Found), found
    assert (found.aspect, found.master.name) == ("1x1", "1x1.webm")
    assert any(f"{FOLDER}/4x5.mp4 measures 1x1, not 4x5" in note for note in found.notes)


async def test_afs_with_nothing_left_names_each_refused_file(tmp_path: Path) -> None:
    place(tmp_path, {"4x5.mp4": MEDIA / "1x1.mp4", "3x4.webm": MEDIA / "9x16.webm"})
    found = await resolve(config(tmp_path), request(family="feed"))
    assert isinstance(found, NotFound)
    assert found.reason == (f"no_match:acceptedAspects=[4x5,1x1,3x4];aspect_mismatch:{FOLDER}/4x5.mp4=1x1"
                            f";aspect_mismatch:{FOLDER}/3x4.webm=9x16")


async def test_without_check_aspect_the_name_decides_and_the_picture_is_still_measured(tmp_path: Path) -> None:
    place(tmp_path, {"9x16.mp4": CASES / "mislabelled" / "9x16.mp4"})
    found = await resolve(config(tmp_path, check_aspect=False), request("9x16"))
    assert isinstance(found, Found) and found.measured is not None
    assert found.measured.to_json() == {"width": 320, "height": 320, "rotation": 0, "aspect": "1x1"}


@pytest.mark.parametrize("chunk_bytes", [65_536, 1_048_576], ids=["head-shorter-than-256k", "head-holds-256k"])
async def test_a_moov_past_the_head_is_measured_by_range_reads(tmp_path: Path, chunk_bytes: int) -> None:
    place(tmp_path, {"9x16.mp4": CASES / "moov_after_head.mp4"})
    found = await resolve(config(tmp_path, chunk_bytes=chunk_bytes), request("9x16"))
    assert isinstance(found, Found) and found.measured is not None
    assert found.measured.to_json()["aspect"] == "9x16"


async def test_a_master_that_cannot_be_measured_is_delivered_as_named_and_the_note_says_so(tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((MEDIA / "9x16.mp4").read_bytes()[:2048])  # the moov it needs is gone
    place(tmp_path, {"9x16.mp4": cut})
    found = await resolve(config(tmp_path), request("9x16"))
    assert isinstance(found, Found) and found.measured is None
    assert any("could not be measured" in note and "delivered as its name says" in note for note in found.notes)


async def test_a_last_segment_without_aspect_picks_candidates_by_measurement(tmp_path: Path) -> None:
    place(tmp_path, {"HRT-1_master_a.mp4": MEDIA / "1x1.mp4", "HRT-1_master_b.mp4": MEDIA / "9x16.mp4",
                     "other.mp4": MEDIA / "9x16.mp4"})
    cfg = config(tmp_path, layout="{code}/v{variation}/{locale}/{code}_*")
    found = await resolve(cfg, request("9x16"))
    assert isinstance(found, Found) and found.master.name == "HRT-1_master_b.mp4"
    afs = await resolve(cfg, request(family="feed"))
    assert isinstance(afs, Found) and (afs.aspect, afs.master.name) == ("1x1", "HRT-1_master_a.mp4")
