"""The layout's last segment as a pattern, on the names real creative teams write."""

from __future__ import annotations

import pytest

from fulfiller.naming import NameMatch, escape, match_names

FOLDER = [
    "HRT-1212_final_1080x1920.mp4", "HRT-1212_final_1080x1080.mov", "HRT-1212_final_1080x1350.webm",
    "Story 9x16 v2 FINAL.mov", "9_16.mp4", "9-16.webm", "9by16.mp4", "9X16.MKV", "1x1.mov", "4x5.jpg",
    "HRT-1212.mov", "HRT-1212.MP4", "hrt-1212_alt.webm", "HRT-12120.mp4", "HRT-1212.mp4.part", "notes.txt",
    "HRT-1212_2024-05-01_9x16.mp4", "Story_v1-1_9x16.mov", "HRT-1212_final_1234x567.mp4",
]


@pytest.mark.parametrize("pattern, kind, expected", [
    # {aspect} in every spelling, alone in the name; extensions in the kind's order, then names.
    ("{aspect}", "video", [("9_16.mp4", "9x16"), ("9by16.mp4", "9x16"), ("1x1.mov", "1x1"),
                           ("9-16.webm", "9x16"), ("9X16.MKV", "9x16")]),
    ("{aspect}", "image", [("4x5.jpg", "4x5")]),
    # Text around the aspect only where the layout puts a *: pixel sizes read as their aspect, an unknown
    # pixel size (1234x567) as none, and a date is no aspect.
    ("HRT-1212_*_{aspect}", "video", [("HRT-1212_2024-05-01_9x16.mp4", "9x16"),
                                      ("HRT-1212_final_1080x1920.mp4", "9x16"),
                                      ("HRT-1212_final_1080x1080.mov", "1x1"),
                                      ("HRT-1212_final_1080x1350.webm", "4x5")]),
    ("Story {aspect} v2 FINAL", "video", [("Story 9x16 v2 FINAL.mov", "9x16")]),
    ("story {aspect}*", "video", [("Story 9x16 v2 FINAL.mov", "9x16")]),  # case blind
    ("Story*{aspect}", "video", [("Story_v1-1_9x16.mov", "9x16")]),  # a version's 1-1 is not taken for 1x1
    # No {aspect}: every master the glob matches, with no aspect read from its name.
    ("HRT-1212", "video", [("HRT-1212.MP4", None), ("HRT-1212.mov", None)]),
    ("HRT-1212*", "video", [("HRT-1212.MP4", None), ("HRT-12120.mp4", None),
                            ("HRT-1212_2024-05-01_9x16.mp4", None), ("HRT-1212_final_1080x1920.mp4", None),
                            ("HRT-1212_final_1234x567.mp4", None), ("HRT-1212.mov", None),
                            ("HRT-1212_final_1080x1080.mov", None),
                            ("HRT-1212_final_1080x1350.webm", None), ("hrt-1212_alt.webm", None)]),
    ("HRT-121?", "video", [("HRT-1212.MP4", None), ("HRT-1212.mov", None)]),
    ("HRT-1212?", "video", [("HRT-12120.mp4", None)]),
    ("HRT-1212", "image", []),
])
def test_patterns_on_a_messy_folder(pattern: str, kind: str, expected: list[tuple[str, str | None]]) -> None:
    assert match_names(pattern, kind, FOLDER) == [NameMatch(*hit) for hit in expected]


def test_the_order_does_not_depend_on_the_listing() -> None:
    assert match_names("HRT-1212*", "video", FOLDER) == match_names("HRT-1212*", "video", FOLDER[::-1])


@pytest.mark.parametrize("value", ["HRT*1", "HRT?1", "HRT[1]", "{aspect}", "a[b"])
def test_an_escaped_value_matches_only_itself(value: str) -> None:
    names = list(dict.fromkeys([f"{value}.mp4", "HRT-1.mp4", "HRT11.mp4", "HRT1.mp4", "9x16.mp4", "ab.mp4", "a[b.mp4"]))
    assert match_names(escape(value), "video", names) == [NameMatch(f"{value}.mp4", None)]
    assert match_names(escape(value) + "_{aspect}", "video", [f"{value}_9x16.mp4"]) == [
        NameMatch(f"{value}_9x16.mp4", "9x16")]


def test_two_aspects_in_one_pattern_must_agree() -> None:
    names = ["9x16_1080x1920.mp4", "9x16_1080x1080.mp4"]
    assert match_names("{aspect}_{aspect}", "video", names) == [NameMatch("9x16_1080x1920.mp4", "9x16")]


def test_a_glob_never_reaches_across_a_separator() -> None:
    assert match_names("a*b", "video", ["a/x/b.mp4", "axb.mp4"]) == [NameMatch("axb.mp4", None)]
