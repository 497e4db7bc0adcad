"""`fulfiller resolve`: the operator's dry run says what the worker would deliver, or skip."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fulfiller.config import load_config
from fulfiller.delivery.resolve import Catalogs, NotFound, find_master
from fulfiller.events import Coordinates, SourceRequest

MEDIA = Path(__file__).resolve().parents[1] / "media"


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    root = tmp_path / "masters"
    (root / "HRT-1/v2/en").mkdir(parents=True)
    shutil.copy(MEDIA / "9x16.mov", root / "HRT-1/v2/en/9x16.MP4")  # misnamed: really QuickTime
    shutil.copy(MEDIA / "1x1.webm", root / "HRT-1/v2/en/1x1.webm")
    shutil.copy(MEDIA / "4x5.jpg", root / "HRT-1/v2/en/4x5.mp4")  # an image saved as .mp4
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"""
state: sqlite:///{tmp_path / "f.db"}
receiver: {{secrets: ["s"]}}
catalogs:
  local: {{type: local, root: "{root}"}}
routes:
  - codes: ["HRT-*"]
    catalog: local
"""
    )
    return cfg


def resolve(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fulfiller.cli", "resolve", "--config", str(cfg), "--variation", "2",
         "--locale", "en", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_oss_found_reports_catalog_object_size_real_type_and_aspect(config: Path) -> None:
    proc = resolve(config, "--code", "HRT-1", "--aspect", "9x16")
    assert proc.returncode == 0, proc.stderr
    assert "catalog:  local" in proc.stdout
    assert "object:   HRT-1/v2/en/9x16.MP4" in proc.stdout
    assert f"size:     {(MEDIA / '9x16.mov').stat().st_size} bytes" in proc.stdout
    assert "type:     video/quicktime (extension mov)" in proc.stdout
    assert "aspect:   9x16" in proc.stdout


def test_afs_passes_over_a_wrong_kind_and_takes_the_next_preferred_aspect(config: Path) -> None:
    # feed preference is 4x5, 1x1, 3x4: 4x5.mp4 is really a JPEG, so 1x1 wins.
    proc = resolve(config, "--code", "HRT-1", "--family", "feed")
    assert proc.returncode == 0, proc.stderr
    assert "4x5.mp4 is image/jpeg, not a video: passed over" in proc.stdout
    assert "aspect:   1x1" in proc.stdout
    assert "type:     video/webm (extension webm)" in proc.stdout


def test_no_match_exits_3_with_the_skip_reason(config: Path) -> None:
    proc = resolve(config, "--code", "HRT-1", "--aspect", "3x4")
    assert proc.returncode == 3
    assert "would skip: no_match:aspect=3x4" in proc.stdout


def test_images_are_looked_for_only_with_image_extensions(config: Path) -> None:
    proc = resolve(config, "--code", "HRT-1", "--family", "feed", "--kind", "image")
    assert proc.returncode == 3
    assert "would skip: no_match:acceptedAspects=[4x5,1x1,3x4]" in proc.stdout


def test_no_route_exits_3(config: Path) -> None:
    proc = resolve(config, "--code", "OTHER-1", "--aspect", "9x16")
    assert proc.returncode == 3
    assert "would skip: no_route" in proc.stdout


def test_a_code_no_file_system_can_name_is_a_skip_not_an_outage(config: Path) -> None:
    # A 300-character segment: the file system would refuse the name (ENAMETOOLONG), once taken for an outage.
    proc = resolve(config, "--code", "HRT-" + "9" * 296, "--aspect", "9x16")
    assert proc.returncode == 3, proc.stderr
    assert "would skip: no_match:aspect=9x16" in proc.stdout


def afs_request(code: str, accepted: tuple[str, ...]) -> SourceRequest:
    return SourceRequest(
        coords=Coordinates("p_42", code, 2, "en"), project_slug="hearty", kind="video", aspect=None,
        family="feed", accepted_aspects=accepted, upload_url="https://x.r2.cloudflarestorage.com/k",
        storage_key="fb-external/p_42/HRT-1/v2/en/feed.video", expires_at=datetime.now(UTC) + timedelta(hours=1),
        callback_url="https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_abc/complete",
    )


async def test_repeated_accepted_aspects_are_each_looked_for_once(config: Path) -> None:
    req = afs_request("HRT-1", ("2x3", "4x5", "2x3", "4x5", "5x4") * 1000)
    catalogs = Catalogs(load_config(config))
    try:
        result = await find_master(req, load_config(config), catalogs)
    finally:
        await catalogs.aclose()

    assert isinstance(result, NotFound)
    # feed prefers 4x5 (a JPEG saved as .mp4 there: passed over), then the platform's order.
    assert [n for n in result.notes if "nothing in" in n] == [
        "4x5: nothing in local", "2x3: nothing in local", "5x4: nothing in local"
    ]
    assert result.reason == "no_match:acceptedAspects=[2x3,4x5,5x4]"
