"""Aspect names: measured sizes named as the platform names aspects, and aspects read from file names."""

from __future__ import annotations

import pytest

from fulfiller.measure.aspect import aspect_name, same_aspect, spelled_aspect


@pytest.mark.parametrize("width, height, name", [
    (1080, 1920, "9x16"), (720, 1280, "9x16"), (1080, 1908, "9x16"),  # 1908: within 2%
    (1080, 1350, "4x5"), (1080, 1080, "1x1"), (1079, 1080, "1x1"), (1080, 1440, "3x4"), (1920, 1080, "16x9"),
    (1440, 1080, "4x3"), (1080, 1620, "2x3"),
    (1080, 1800, "3:5"),  # 0.6 is 6.7% from 9x16 and 10% from 2x3: no platform name
    (1000, 1600, "5:8"), (1080, 1850, "108:185"),
])
def test_aspect_name(width: int, height: int, name: str) -> None:
    assert aspect_name(width, height) == name


def test_the_2_percent_edge() -> None:
    # 9x16 is 0.5625: 2% either side is 0.55125 .. 0.57375.
    assert aspect_name(5737, 10000) == "9x16" and aspect_name(5513, 10000) == "9x16"
    assert aspect_name(5740, 10000) == "287:500" and aspect_name(5510, 10000) == "551:1000"


@pytest.mark.parametrize("text, aspect", [
    ("9x16", "9x16"), ("9X16", "9x16"), ("9_16", "9x16"), ("9-16", "9x16"), ("9by16", "9x16"), ("9BY16", "9x16"),
    ("9:16", "9x16"), ("9×16", "9x16"), ("1080x1920", "9x16"), ("720x1280", "9x16"), ("1080_1920", "9x16"),
    ("1080x1350", "4x5"), ("1080x1080", "1x1"), ("16x9", "16x9"), ("1920x1080", "16x9"), ("18x32", "9x16"),
    ("2x1", "2x1"), ("10x16", "5x8"), ("29x16", "29x16"),  # written as an aspect: exact, not the nearest
    ("1234x567", None), ("0x16", None), ("9x0", None), ("9x", None), ("x16", None), ("9 16", None),
    ("9.16", None), ("final", None), ("", None), ("123456x1", None),
])
def test_spelled_aspect(text: str, aspect: str | None) -> None:
    assert spelled_aspect(text) == aspect


@pytest.mark.parametrize("one, other, same", [
    ("9x16", "9x16", True), ("9x16", "1080x1920", True), ("10x16", "5:8", True), ("9x16", "1x1", False),
    ("9x16", "0x0", False), ("9x16", "tall", False), ("1x1", "320:321", True),
])
def test_same_aspect(one: str, other: str, same: bool) -> None:
    assert same_aspect(one, other) is same and same_aspect(other, one) is same
