"""The catalog base: the layout rendered into safe path segments and a name pattern, names matched in a listing,
listings kept for one resolve, and Opened (the sniff's stream, handed on to the upload so a master is fetched
once)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from fulfiller.catalogs.base import Catalog, CatalogUnavailable, Listing, Listings, Master, Opened
from fulfiller.catalogs.layout import matching, render_layout
from fulfiller.config import DEFAULT_LAYOUT
from support.masters import FIELDS

DATA = bytes(range(256)) * 40  # 10,240 bytes


class Counting(Catalog):
    """A catalog in memory, one folder deep, that counts the folders it lists and the streams it opens and
    sees closed."""

    def __init__(self, fail_at_start: bool = False, layout: str = "{code}", names: tuple[str, ...] = ("X-1.mp4",)):
        super().__init__("mem", layout)
        self.opened = self.closed = 0
        self.fail_at_start = fail_at_start
        self.names = names
        self.looked_in: list[list[str]] = []
        self.list_failures: list[Exception] = []  # raised by the next listings, in turn

    async def list_in(self, folders: list[str]) -> Listing:
        self.looked_in.append(folders)
        if self.list_failures:
            raise self.list_failures.pop(0)
        return Listing([Master("mem", name, name, len(DATA)) for name in self.names], ["sub"])

    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        return DATA[offset : offset + length]

    async def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        self.opened += 1
        try:
            if self.fail_at_start:
                raise ConnectionError("catalog down")
            for offset in range(start, master.size, chunk_size):
                yield DATA[offset : offset + chunk_size]
        finally:
            self.closed += 1


async def chunks_of(opened: Opened) -> list[bytes]:
    whole = opened.take()
    assert whole is not None
    return [chunk async for chunk in whole]


async def test_the_head_is_the_first_chunk_and_the_upload_gets_every_byte_once() -> None:
    catalog = Counting()
    [master] = await catalog.find({"code": "X-1"}, "video")

    opened = await Opened.start(catalog, master, chunk_size=4096)

    assert opened.head == DATA[:4096]
    assert b"".join(await chunks_of(opened)) == DATA
    assert (catalog.opened, catalog.closed) == (1, 1)
    assert opened.take() is None  # a retry must open its own stream


async def test_a_stream_nobody_takes_is_closed() -> None:
    catalog = Counting()
    [master] = await catalog.find({"code": "X-1"}, "video")

    opened = await Opened.start(catalog, master, chunk_size=4096)
    await opened.aclose()
    await opened.aclose()  # idempotent: the engine closes it on every way out

    assert (catalog.opened, catalog.closed) == (1, 1)
    assert opened.take() is None


async def test_a_master_smaller_than_a_chunk_is_all_head() -> None:
    catalog = Counting()
    [master] = await catalog.find({"code": "X-1"}, "video")

    opened = await Opened.start(catalog, master, chunk_size=1 << 20)

    assert opened.head == DATA
    assert await chunks_of(opened) == [DATA]


async def test_a_failure_to_start_propagates_and_leaves_nothing_open() -> None:
    catalog = Counting(fail_at_start=True)
    [master] = await catalog.find({"code": "X-1"}, "video")

    with pytest.raises(ConnectionError, match="catalog down"):
        await Opened.start(catalog, master, chunk_size=4096)
    assert (catalog.opened, catalog.closed) == (1, 1)


# -- the layout, rendered ------------------------------------------------------------------


def test_render_fills_every_placeholder_and_splits_only_on_the_layouts_slashes() -> None:
    layout = "{project}/{project_id}/{kind}/{code}/v{variation}/{locale}/{aspect}"
    assert render_layout(layout, FIELDS) == (["hearty", "p_42", "video", "HRT-001", "v2", "en_US"], "{aspect}")
    # Empty segments of the layout's own text are its spelling, not a request's doing.
    assert render_layout("/masters//{code}/{aspect}", FIELDS) == (["masters", "HRT-001"], "{aspect}")
    # Values that are merely unusual stay one segment.
    odd = {**FIELDS, "code": "Été 2024+HRT ..x", "locale": "é" * 127}
    assert render_layout(DEFAULT_LAYOUT, odd) == (["Été 2024+HRT ..x", "v2", "é" * 127], "{aspect}")


def test_the_last_segment_is_a_pattern_with_values_escaped_and_aspect_kept() -> None:
    fields = {**FIELDS, "code": "HRT*1?[x]{y}"}
    # A value's glob characters stand for themselves; the layout's own "*" globs.
    assert render_layout("{code}/{code}_*_{aspect}", fields) == (
        ["HRT*1?[x]{y}"], "HRT[*]1[?][[]x][{]y}_*_{aspect}")
    # {aspect} in a folder is filled literally, as ever; a last segment without it is a pattern all the same.
    assert render_layout("{aspect}/{code}*", FIELDS) == (["9x16"], "HRT-001*")
    # A brace the layout spells ("{{") is text, not a placeholder for the matcher.
    assert render_layout("{code}/{{aspect}}", FIELDS) == (["HRT-001"], "[{]aspect}")


@pytest.mark.parametrize(
    "code",
    [
        "a/b", "/HRT-001", "HRT-001/", "a\\b", "..", ".", "x\0y", "tab\there", "line\nbreak", "del\x7f",
        "c1\x85control", "lone\ud800surrogate", "x" * 256, "é" * 128,  # 256 UTF-8 bytes in 128 characters
        "/".join(["s"] * 5000),
    ],
)
def test_a_value_that_is_not_one_safe_segment_renders_nothing(code: str) -> None:
    assert render_layout(DEFAULT_LAYOUT, {**FIELDS, "code": code}) is None


def test_a_value_at_the_limit_renders() -> None:
    assert render_layout("{code}", {"code": "€" * 85}) == ([], "€" * 85)  # 255 UTF-8 bytes


@pytest.mark.parametrize(
    ("layout", "fields"),
    [
        ("{project}/{code}", {**FIELDS, "project": ""}),  # an empty segment would name the parent folder
        ("{code}/{project}", {**FIELDS, "project": ""}),  # or no file at all
        ("{code}.{project}/{aspect}", {**FIELDS, "code": "", "project": ""}),  # "." once joined
        ("{code}_{locale}/{aspect}", {**FIELDS, "code": "c" * 200, "locale": "l" * 55}),  # 256 bytes once joined
        ("masters-{code}/{aspect}", {**FIELDS, "code": "c" * 249}),  # the layout's own text counts too
        ("{code}_{aspect}", {**FIELDS, "code": "c" * 251}),  # the name pattern is judged with its aspect filled in
    ],
)
def test_a_segment_that_comes_out_empty_or_too_long_renders_nothing(layout: str, fields: dict[str, Any]) -> None:
    assert render_layout(layout, fields) is None


async def test_find_asks_the_backend_only_for_a_safe_path() -> None:
    catalog = Counting(layout=DEFAULT_LAYOUT, names=("9x16.mp4",))

    assert await catalog.find({**FIELDS, "code": "../../etc"}, "video") == []
    assert await catalog.find({**FIELDS, "code": "x" * 300}, "video") == []
    assert catalog.looked_in == []
    assert len(await catalog.find(FIELDS, "video")) == 1
    assert catalog.looked_in == [["HRT-001", "v2", "en_US"]]


@pytest.mark.parametrize("folders", [[".."], ["a", "."], ["a/b"], [""], ["x\0y"], ["s" * 256]])
async def test_list_folder_of_a_path_no_catalog_can_hold_is_empty_unasked(folders: list[str]) -> None:
    catalog = Counting()
    assert await catalog.list_folder(folders) == Listing()
    assert catalog.looked_in == []
    assert (await catalog.list_folder([])).folders == ["sub"]  # the root itself
    assert catalog.looked_in == [[]]


# -- names matched in a listing ------------------------------------------------------------


def masters(*names: str) -> list[Master]:
    return [Master("mem", name, name, 1, ref=f"id-{i}") for i, name in enumerate(names)]


@pytest.mark.parametrize(
    ("pattern", "aspect", "names", "found"),
    [
        # Every spelling of the aspect, best extension first, then by name; other aspects and kinds left out.
        ("{aspect}", "9x16", ["9x16.mov", "9_16.mp4", "9-16.webm", "1080x1920.MP4", "4x5.mp4", "9x16.jpg",
                              "9x16.mp4.part", "16x9.mp4"],
         [("1080x1920.MP4", "9x16"), ("9_16.mp4", "9x16"), ("9x16.mov", "9x16"), ("9-16.webm", "9x16")]),
        ("HRT-1212_*_{aspect}", "9x16", ["HRT-1212_final_1080x1920.mp4", "HRT-1212_final_1080x1080.mp4",
                                         "HRT-1213_final_1080x1920.mp4", "HRT-1212_1080x1920.mp4"],
         [("HRT-1212_final_1080x1920.mp4", "9x16")]),
        ("Story*{aspect}*", "9x16", ["Story 9x16 v2 FINAL.mov", "story_9by16.mkv", "Story 4x5 v2 FINAL.mov",
                                     "Reel 9x16.mov"],
         [("Story 9x16 v2 FINAL.mov", "9x16"), ("story_9by16.mkv", "9x16")]),
        # No {aspect}: every name that matches, the aspect left to measurement.
        ("HRT-1212*", "9x16", ["HRT-1212_final_1080x1080.mp4", "HRT-1212.mov", "HRT-12120.mp4", "other.mp4"],
         [("HRT-12120.mp4", None), ("HRT-1212_final_1080x1080.mp4", None), ("HRT-1212.mov", None)]),
        # An escaped value matches itself only.
        ("HRT[*]1_{aspect}", "1x1", ["HRT*1_1x1.mp4", "HRTX1_1x1.mp4", "HRT-long-1_1x1.mp4"],
         [("HRT*1_1x1.mp4", "1x1")]),
    ],
)
def test_matching_keeps_the_names_the_pattern_and_aspect_allow(
    pattern: str, aspect: str, names: list[str], found: list[tuple[str, str | None]]
) -> None:
    assert [(m.name, m.named_aspect) for m in matching(masters(*names), pattern, "video", aspect)] == found


def test_files_sharing_a_name_keep_their_listed_order() -> None:
    listed = masters("9x16.mp4", "9x16.mp4", "9x16.mov")
    assert [m.ref for m in matching(listed, "{aspect}", "video", "9x16")] == ["id-0", "id-1", "id-2"]
    assert [m.ref for m in matching(listed[::-1], "{aspect}", "video", "9x16")] == ["id-1", "id-0", "id-2"]


# -- one resolve, each folder listed once ----------------------------------------------------


async def test_listings_list_each_folder_once_per_resolve() -> None:
    catalog = Counting(layout="{code}/{aspect}", names=("9x16.mp4", "4x5.mp4", "1x1.mp4"))
    listings = Listings()

    for aspect in ("4x5", "1x1", "9x16"):  # an AFS walk
        [master] = await catalog.find({"code": "HRT-1", "aspect": aspect}, "video", listings)
        assert master.named_aspect == aspect
    await catalog.find({"code": "HRT-2", "aspect": "9x16"}, "video", listings)

    assert catalog.looked_in == [["HRT-1"], ["HRT-2"]]
    await catalog.find({"code": "HRT-1", "aspect": "9x16"}, "video")  # no listings: a look of its own
    assert catalog.looked_in == [["HRT-1"], ["HRT-2"], ["HRT-1"]]


async def test_a_failed_listing_is_not_kept() -> None:
    catalog = Counting(layout="{code}/{aspect}", names=("9x16.mp4",))
    catalog.list_failures.append(CatalogUnavailable("throttled"))
    listings = Listings()

    with pytest.raises(CatalogUnavailable):
        await catalog.find({"code": "HRT-1", "aspect": "9x16"}, "video", listings)
    assert len(await catalog.find({"code": "HRT-1", "aspect": "9x16"}, "video", listings)) == 1
    assert catalog.looked_in == [["HRT-1"], ["HRT-1"]]
