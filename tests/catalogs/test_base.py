"""The catalog base: the layout rendered into safe path segments, and Opened (the sniff's stream, handed on to
the upload so a master is fetched once)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from fulfiller.catalogs.base import Catalog, Master, Opened, render_layout
from fulfiller.config import DEFAULT_LAYOUT
from support.masters import FIELDS

DATA = bytes(range(256)) * 40  # 10,240 bytes


class Counting(Catalog):
    """A catalog in memory that counts the streams it opens and sees closed."""

    def __init__(self, fail_at_start: bool = False, layout: str = "{code}"):
        super().__init__("mem", layout)
        self.opened = self.closed = 0
        self.fail_at_start = fail_at_start
        self.looked_in: list[tuple[list[str], str]] = []

    async def find_in(self, folders: list[str], stem: str, kind: str) -> list[Master]:
        self.looked_in.append((folders, stem))
        return [Master("mem", "x.mp4", "x.mp4", len(DATA))]

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
    assert render_layout(layout, FIELDS) == (["hearty", "p_42", "video", "HRT-001", "v2", "en_US"], "9x16")
    # Empty segments of the layout's own text are its spelling, not a request's doing.
    assert render_layout("/masters//{code}/{aspect}", FIELDS) == (["masters", "HRT-001"], "9x16")
    # Values that are merely unusual stay one segment.
    odd = {**FIELDS, "code": "Été 2024+HRT ..x", "locale": "é" * 127}
    assert render_layout(DEFAULT_LAYOUT, odd) == (["Été 2024+HRT ..x", "v2", "é" * 127], "9x16")


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
    ],
)
def test_a_segment_that_comes_out_empty_or_too_long_renders_nothing(layout: str, fields: dict[str, Any]) -> None:
    assert render_layout(layout, fields) is None


async def test_find_asks_the_backend_only_for_a_safe_path() -> None:
    catalog = Counting(layout=DEFAULT_LAYOUT)

    assert await catalog.find({**FIELDS, "code": "../../etc"}, "video") == []
    assert await catalog.find({**FIELDS, "code": "x" * 300}, "video") == []
    assert catalog.looked_in == []
    assert len(await catalog.find(FIELDS, "video")) == 1
    assert catalog.looked_in == [(["HRT-001", "v2", "en_US"], "9x16")]
