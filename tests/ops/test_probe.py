"""``fulfiller probe``, run as the real command on the media fixtures and cases."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.servers import fulfiller_command

MEDIA = Path(__file__).resolve().parents[1] / "media"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fulfiller_command(), "probe", *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=MEDIA)


def test_json_is_one_object_per_file_with_the_display_picture() -> None:
    done = probe("--json", "9x16.webm", "cases/rotated_90.mp4", "cases/mislabelled/9x16.mp4", "cases/irot_270.avif")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"file": "9x16.webm", "format": "webm", "width": 180, "height": 320, "rotation": 0, "aspect": "9x16"},
        {"file": "cases/rotated_90.mp4", "format": "mp4", "width": 180, "height": 320, "rotation": 90,
         "aspect": "9x16"},
        {"file": "cases/mislabelled/9x16.mp4", "format": "mp4", "width": 320, "height": 320, "rotation": 0,
         "aspect": "1x1"},
        {"file": "cases/irot_270.avif", "format": "avif", "width": 180, "height": 320, "rotation": 270,
         "aspect": "9x16"},
    ]


def test_human_output_is_a_line_per_file_and_an_unreadable_one_says_why_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "cut.mp4").write_bytes((MEDIA / "9x16.mp4").read_bytes()[:3000])  # its moov is at the end
    done = probe("cases/orientation_6.jpg", str(tmp_path / "cut.mp4"), "README.md", str(tmp_path / "gone.mov"),
                 "4x5.png")
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        "cases/orientation_6.jpg: jpg 180x320 (coded 320x180), rotation 90, aspect 9x16",
        f"{tmp_path / 'cut.mp4'}: unmeasurable: box 'mdat' is cut short or overruns its container",
        "README.md: unmeasurable: not a video or image format the platform takes",
        f"{tmp_path / 'gone.mov'}: cannot read: No such file or directory",
        "4x5.png: png 256x320, rotation 0, aspect 4x5",
    ]
    assert "Traceback" not in done.stderr


def test_json_names_the_error_of_an_unreadable_file() -> None:
    done = probe("--json", "README.md")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"file": "README.md",
                                       "error": "unmeasurable: not a video or image format the platform takes"}


def test_probe_needs_a_file_and_no_config() -> None:
    done = probe()
    assert done.returncode == 2 and "FILE" in done.stderr
