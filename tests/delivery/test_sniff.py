"""libmagic on the real fixtures: the MIME types tests/media/README.md documents."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fulfiller.delivery.sniff import HEAD_BYTES, classify, sniff
from fulfiller.media import MIME_TYPES

MEDIA = Path(__file__).resolve().parents[1] / "media"


def documented_mimes() -> dict[str, str]:
    """File name -> python-magic column of the README's table."""
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([^`]+)` \|[^|]*\|$", (MEDIA / "README.md").read_text(), re.M)
    return dict(rows)


DOCUMENTED = documented_mimes()


def test_readme_documents_every_fixture() -> None:
    # The fixtures are the folder's media files; cases/ and its script are the measuring cases (tests/measure/).
    on_disk = {p.name for p in MEDIA.iterdir() if p.is_file() and p.suffix not in (".md", ".sh")}
    assert len(DOCUMENTED) == 34
    assert set(DOCUMENTED) == on_disk


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_sniff_gives_documented_mime(name: str) -> None:
    head = (MEDIA / name).read_bytes()[:HEAD_BYTES]
    assert sniff(head) == DOCUMENTED[name]


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_classify_maps_fixture_to_kind_and_extension(name: str) -> None:
    kind, ext = classify(sniff((MEDIA / name).read_bytes()[:HEAD_BYTES]))
    file_ext = name.rpartition(".")[2]
    assert kind == ("video" if file_ext in ("mp4", "mov", "webm", "mkv") else "image")
    # The fixtures are named truthfully, so the sniffed extension is the file's own.
    assert ext == file_ext


def test_classify_covers_every_accepted_mime() -> None:
    assert {m: classify(m) for m in MIME_TYPES} == MIME_TYPES
    assert classify("image/jpeg") == ("image", "jpg")
    assert classify("video/quicktime") == ("video", "mov")


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"code,variation,locale\nHRT-1,1,en_US\n", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param((MEDIA / "9x16.mp4").read_bytes()[:8], id="mp4-cut-before-brand"),
        pytest.param((MEDIA / "9x16.jpg").read_bytes()[:3], id="jpeg-cut-before-marker"),
        pytest.param(bytes(range(256)) * 4, id="garbage"),
    ],
)
def test_not_media_classifies_to_none(head: bytes) -> None:
    assert classify(sniff(head)) is None


def test_sniff_is_safe_across_threads() -> None:
    names = sorted(DOCUMENTED) * 8
    heads = [(MEDIA / n).read_bytes()[:HEAD_BYTES] for n in names]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(sniff, heads))
    assert got == [DOCUMENTED[n] for n in names]
