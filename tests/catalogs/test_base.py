"""Opened: the sniff's stream, handed on to the upload so a master is fetched once."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import pytest

from fulfiller.catalogs.base import Catalog, Master, Opened

DATA = bytes(range(256)) * 40  # 10,240 bytes


class Counting(Catalog):
    """A catalog in memory that counts the streams it opens and sees closed."""

    def __init__(self, fail_at_start: bool = False):
        super().__init__("mem", "{code}")
        self.opened = self.closed = 0
        self.fail_at_start = fail_at_start

    async def find(self, fields: Mapping[str, Any], kind: str) -> list[Master]:
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

    async def read_range(self, master: Master, start: int, length: int) -> bytes:
        return DATA[start : start + length]


async def chunks_of(opened: Opened) -> list[bytes]:
    whole = opened.take()
    assert whole is not None
    return [chunk async for chunk in whole]


async def test_the_head_is_the_first_chunk_and_the_upload_gets_every_byte_once() -> None:
    catalog = Counting()
    [master] = await catalog.find({}, "video")

    opened = await Opened.start(catalog, master, chunk_size=4096)

    assert opened.head == DATA[:4096]
    assert b"".join(await chunks_of(opened)) == DATA
    assert (catalog.opened, catalog.closed) == (1, 1)
    assert opened.take() is None  # a retry must open its own stream


async def test_a_stream_nobody_takes_is_closed() -> None:
    catalog = Counting()
    [master] = await catalog.find({}, "video")

    opened = await Opened.start(catalog, master, chunk_size=4096)
    await opened.aclose()
    await opened.aclose()  # idempotent: the engine closes it on every way out

    assert (catalog.opened, catalog.closed) == (1, 1)
    assert opened.take() is None


async def test_a_master_smaller_than_a_chunk_is_all_head() -> None:
    catalog = Counting()
    [master] = await catalog.find({}, "video")

    opened = await Opened.start(catalog, master, chunk_size=1 << 20)

    assert opened.head == DATA
    assert await chunks_of(opened) == [DATA]


async def test_a_failure_to_start_propagates_and_leaves_nothing_open() -> None:
    catalog = Counting(fail_at_start=True)
    [master] = await catalog.find({}, "video")

    with pytest.raises(ConnectionError, match="catalog down"):
        await Opened.start(catalog, master, chunk_size=4096)
    assert (catalog.opened, catalog.closed) == (1, 1)
