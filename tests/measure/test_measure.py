"""Every format and rotation measured right, from the files' own bytes, with only the range reads SPEC allows.

The expected facts are read from tests/media/README.md (ffprobe's and exiftool's
figures for files made by ffmpeg, exiftool and avifenc), so a file the README
does not describe, or describes differently, fails here.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from fulfiller.measure import HEAD_BYTES, Measured, Unmeasurable, measure
from fulfiller.measure.bmff import MOOV_LIMIT

MEDIA = Path(__file__).resolve().parents[1] / "media"
README = (MEDIA / "README.md").read_text()
# | `9x16.mp4` | MP4 (ISO BMFF, brand isom) / H.264 | 180x320 | ...
FIXTURES = {name: (int(w), int(h))
            for name, w, h in re.findall(r"^\| `([^`/]+)` \| [^|]+ \| (\d+)x(\d+) \|", README, re.M)}
# | `cases/rotated_90.mp4` | 320x180 | 90 | 180x320 | 9x16 | ...
_CASE_ROW = r"^\| `(cases/[^`]+)` \| (\d+)x(\d+) \| (\d+) \| (\d+)x(\d+) \| (\S+) \|"
CASES = {name: ((int(cw), int(ch)), int(rotation), (int(dw), int(dh)), aspect)
         for name, cw, ch, rotation, dw, dh, aspect in re.findall(_CASE_ROW, README, re.M)}


class Served:
    """A file served by range reads, each one recorded as (offset, length asked, bytes returned)."""

    def __init__(self, data: bytes, size: int | None = None):
        self.data, self.size, self.calls = data, len(data) if size is None else size, []

    async def read(self, offset: int, length: int) -> bytes:
        got = self.data[offset:offset + length]
        self.calls.append((offset, length, len(got)))
        return got

    @property
    def served(self) -> int:
        return sum(got for _, _, got in self.calls)


async def measured(data: bytes) -> Measured:
    return await measure(Served(data).read, len(data))


def test_the_readme_describes_every_file() -> None:
    assert len(FIXTURES) == 34 and len(CASES) == 6
    on_disk = {str(p.relative_to(MEDIA)) for p in MEDIA.rglob("*") if p.is_file() and p.suffix not in (".md", ".sh")}
    assert on_disk == set(FIXTURES) | set(CASES)


@pytest.mark.parametrize("name", sorted(FIXTURES))
async def test_each_fixture_measures_as_its_name_and_ffprobe_say(name: str) -> None:
    found = await measured((MEDIA / name).read_bytes())
    width, height = FIXTURES[name]
    assert found.format == name.rpartition(".")[2]
    assert (found.width, found.height, found.rotation) == (width, height, 0)
    assert (found.display_width, found.display_height) == (width, height)
    assert found.aspect == name.partition(".")[0].partition("_")[0]  # 9x16_faststart.mp4 is 9x16
    assert found.to_json() == {"width": width, "height": height, "rotation": 0, "aspect": found.aspect}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_each_case_measures_its_display_picture(name: str) -> None:
    coded, rotation, display, aspect = CASES[name]
    found = await measured((MEDIA / name).read_bytes())
    assert found.format == name.rpartition(".")[2]
    assert ((found.width, found.height), found.rotation) == (coded, rotation)
    assert found.to_json() == {"width": display[0], "height": display[1], "rotation": rotation, "aspect": aspect}


async def test_a_9x16_name_on_a_square_picture_measures_1x1() -> None:
    found = await measured((MEDIA / "cases/mislabelled/9x16.mp4").read_bytes())
    assert found.aspect == "1x1"


def _moov_offset(data: bytes) -> int:
    pos = 0
    while data[pos + 4:pos + 8] != b"moov":
        pos += struct.unpack_from(">I", data, pos)[0]
    return pos


async def test_moov_past_the_head_is_read_alone_with_box_header_reads_between() -> None:
    data = (MEDIA / "cases/moov_after_head.mp4").read_bytes()
    moov = _moov_offset(data)
    assert moov > HEAD_BYTES
    file = Served(data)
    found = await measure(file.read, len(data))
    assert found.to_json() == {"width": 180, "height": 320, "rotation": 0, "aspect": "9x16"}
    head, *rest = file.calls
    assert head == (0, HEAD_BYTES, HEAD_BYTES)
    # Past the head: 16-byte box headers, then the moov's payload in one read; never the mdat's bytes.
    *headers, body = rest
    assert all(length == 16 for _, length, _ in headers) and headers[-1][0] == moov
    assert body == (moov + 8, len(data) - moov - 8, len(data) - moov - 8)
    assert file.served == HEAD_BYTES + 16 * len(headers) + len(data) - moov - 8


@pytest.mark.parametrize("name", ["9x16_faststart.mp4", "9x16.mp4", "9x16.webm", "9x16.jpg", "cases/irot_270.avif"])
async def test_a_small_file_is_measured_from_one_read(name: str) -> None:
    data = (MEDIA / name).read_bytes()
    file = Served(data)
    await measure(file.read, len(data))
    assert file.calls == [(0, len(data), len(data))]


class Sparse(Served):
    """A large file of which only ``regions`` (offset -> bytes) are stored: the rest reads as zeros."""

    def __init__(self, regions: dict[int, bytes], size: int):
        super().__init__(b"", size)
        self.regions = regions

    async def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        out = bytearray(max(0, end - offset))
        for start, blob in self.regions.items():
            lo, hi = max(offset, start), min(end, start + len(blob))
            if lo < hi:
                out[lo - offset:hi - offset] = blob[lo - start:hi - start]
        self.calls.append((offset, length, len(out)))
        return bytes(out)


async def test_a_1_gib_moov_at_end_master_costs_its_head_one_box_header_and_its_moov() -> None:
    data = (MEDIA / "cases/moov_after_head.mp4").read_bytes()
    mdat_at, moov = data.index(b"mdat") - 4, data[_moov_offset(data):]
    prefix = data[:mdat_at] + struct.pack(">I4s", 1 << 30, b"mdat")  # the mdat now holds 1 GiB
    file = Sparse({0: prefix, mdat_at + (1 << 30): moov}, mdat_at + (1 << 30) + len(moov))
    found = await measure(file.read, file.size)
    assert found.aspect == "9x16"
    # The head holds ftyp, free and the mdat's header; then the moov's header, then the moov.
    assert [length for _, length, _ in file.calls] == [HEAD_BYTES, 16, len(moov) - 8]
    assert file.served < file.size / 3000


async def test_a_moov_over_the_limit_is_refused_without_reading_it() -> None:
    head = struct.pack(">I4s4sI", 16, b"ftyp", b"isom", 0) + struct.pack(">I4s", 8 + 4096, b"mdat")
    moov_at = len(head) + 4096
    file = Sparse({0: head, moov_at: struct.pack(">I4s", MOOV_LIMIT + 9, b"moov")}, moov_at + MOOV_LIMIT + 9)
    with pytest.raises(Unmeasurable, match="header box"):
        await measure(file.read, file.size)
    assert file.served == HEAD_BYTES


async def test_a_failing_reader_is_not_taken_for_a_bad_file() -> None:
    async def read(offset: int, length: int) -> bytes:
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        await measure(read, 1000)


async def test_a_moov_that_starts_in_the_head_and_ends_past_it_costs_one_more_read() -> None:
    data = (MEDIA / "cases/moov_after_head.mp4").read_bytes()
    mdat_at, moov = data.index(b"mdat") - 4, data[_moov_offset(data):]
    moov_at = HEAD_BYTES - 100
    prefix = data[:mdat_at] + struct.pack(">I4s", moov_at - mdat_at, b"mdat")
    file = Sparse({0: prefix, moov_at: moov}, moov_at + len(moov))
    assert (await measure(file.read, file.size)).aspect == "9x16"
    assert file.calls == [(0, HEAD_BYTES, HEAD_BYTES), (moov_at + 8, len(moov) - 8, len(moov) - 8)]
