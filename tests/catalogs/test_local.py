"""LocalCatalog against real files in a temporary tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable, Listing, Listings
from fulfiller.catalogs.local import LocalCatalog
from fulfiller.catalogs.registry import build_catalog
from fulfiller.config import DEFAULT_LAYOUT, LocalCatalogConfig
from support.masters import FIELDS, MEDIA


def put(root: Path, rel: str, data: bytes | None = None) -> bytes:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (MEDIA / "9x16.mp4").read_bytes() if data is None else data
    path.write_bytes(data)
    return data


def catalog(root: Path, layout: str = DEFAULT_LAYOUT) -> LocalCatalog:
    return LocalCatalog.from_config("disk", LocalCatalogConfig(type="local", root=str(root), layout=layout))


async def test_find_fills_every_placeholder(tmp_path: Path) -> None:
    data = put(tmp_path, "hearty/p_42/video/HRT-001/v2/en_US/9x16.mp4")
    cat = catalog(tmp_path, "{project}/{project_id}/{kind}/{code}/v{variation}/{locale}/{aspect}")

    [master] = await cat.find(FIELDS, "video")

    assert master.catalog == "disk"
    assert master.object == "hearty/p_42/video/HRT-001/v2/en_US/9x16.mp4"
    assert master.name == "9x16.mp4"
    assert master.size == len(data)
    assert Path(master.ref) == tmp_path.resolve() / master.object
    assert Path(master.ref).is_absolute()


async def test_relative_root_is_taken_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    put(tmp_path / "masters", "HRT-001/v2/en_US/9x16.mp4")
    monkeypatch.chdir(tmp_path)
    cat = LocalCatalog.from_config("disk", LocalCatalogConfig(type="local"))  # root: ./masters
    monkeypatch.chdir("/")

    [master] = await cat.find(FIELDS, "video")

    assert Path(master.ref) == (tmp_path / "masters/HRT-001/v2/en_US/9x16.mp4").resolve()


async def test_extensions_are_case_blind(tmp_path: Path) -> None:
    put(tmp_path, "HRT-001/v2/en_US/9X16.MP4")
    [master] = await catalog(tmp_path).find(FIELDS, "video")
    assert master.name == "9X16.MP4"


async def test_choice_among_extensions_is_deterministic(tmp_path: Path) -> None:
    for name in ["9x16.mkv", "9x16.webm", "9x16.MOV", "9x16.mp4"]:
        put(tmp_path, f"HRT-001/v2/en_US/{name}")
    masters = await catalog(tmp_path).find(FIELDS, "video")
    assert [m.name for m in masters] == ["9x16.mp4", "9x16.MOV", "9x16.webm", "9x16.mkv"]


async def test_wrong_kind_and_other_stems_are_ignored(tmp_path: Path) -> None:
    for name in ["9x16.jpg", "9x16.png", "9x16.mp4.part", "9x16_old.mp4", "4x5.mp4", "9x16"]:
        put(tmp_path, f"HRT-001/v2/en_US/{name}")
    (tmp_path / "HRT-001/v2/en_US/9x16.webm").mkdir()  # a folder is never a master

    assert await catalog(tmp_path).find(FIELDS, "video") == []
    images = await catalog(tmp_path).find(FIELDS, "image")
    assert [m.name for m in images] == ["9x16.jpg", "9x16.png"]


async def test_missing_folder_is_not_found(tmp_path: Path) -> None:
    assert await catalog(tmp_path).find(FIELDS, "video") == []
    put(tmp_path, "HRT-001/v2/en_US", b"a file where a folder should be")
    assert await catalog(tmp_path).find(FIELDS, "video") == []


async def test_missing_root_is_unavailable_not_a_skip(tmp_path: Path) -> None:
    with pytest.raises(CatalogUnavailable, match="root folder"):
        await catalog(tmp_path / "unmounted").find(FIELDS, "video")


@pytest.mark.parametrize("code", ["../outside", "..", ".", "a/../../outside", "x\0y"])
async def test_path_escape_is_refused(tmp_path: Path, code: str) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)  # so the kernel can walk "a/.." for real
    put(tmp_path, "outside/v2/en_US/9x16.mp4")
    put(tmp_path, "v2/en_US/9x16.mp4")  # what "." and ".." would land on
    put(root, "v2/en_US/9x16.mp4")
    assert await catalog(root).find({**FIELDS, "code": code}, "video") == []


async def test_a_code_holding_a_slash_is_one_segment_not_two(tmp_path: Path) -> None:
    put(tmp_path, "HRT/001/v2/en_US/9x16.mp4")  # what the code would find if its "/" split it
    assert await catalog(tmp_path).find({**FIELDS, "code": "HRT/001"}, "video") == []


async def test_a_segment_too_long_for_any_file_system_is_not_found_not_an_outage(tmp_path: Path) -> None:
    # The file system refuses the name (ENAMETOOLONG): once an outage, retried until the deadline.
    assert await catalog(tmp_path).find({**FIELDS, "code": "C" * 300}, "video") == []


async def test_a_path_too_long_for_the_kernel_is_not_found(tmp_path: Path) -> None:
    # Every segment fits, but the whole path is over PATH_MAX: the kernel answers ENAMETOOLONG.
    layout = "{code}/" + "/".join(["d" * 250] * 17) + "/{aspect}"
    assert await catalog(tmp_path, layout).find(FIELDS, "video") == []


async def test_a_symbolic_link_loop_on_the_path_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "LOOP").symlink_to(tmp_path / "LOOP")  # ELOOP on any path through it
    assert await catalog(tmp_path).find({**FIELDS, "code": "LOOP"}, "video") == []


async def test_a_link_loop_beside_the_master_is_passed_over(tmp_path: Path) -> None:
    put(tmp_path, "HRT-001/v2/en_US/9x16.mov")
    loop = tmp_path / "HRT-001/v2/en_US/9x16.mp4"
    loop.symlink_to(loop)

    [master] = await catalog(tmp_path).find(FIELDS, "video")

    assert master.name == "9x16.mov"


async def test_stream_from_offset_gives_exact_bytes(tmp_path: Path) -> None:
    data = put(tmp_path, "HRT-001/v2/en_US/9x16.mp4")
    [master] = await catalog(tmp_path).find(FIELDS, "video")
    cat = catalog(tmp_path)

    chunks = [c async for c in cat.stream(master, start=1000, chunk_size=1024)]

    assert b"".join(chunks) == data[1000:]
    assert [len(c) for c in chunks[:-1]] == [1024] * (len(chunks) - 1)
    assert b"".join([c async for c in cat.stream(master)]) == data
    assert [c async for c in cat.stream(master, start=len(data))] == []


async def test_vanished_file_is_a_catalog_error(tmp_path: Path) -> None:
    put(tmp_path, "HRT-001/v2/en_US/9x16.mp4")
    cat = catalog(tmp_path)
    [master] = await cat.find(FIELDS, "video")
    Path(master.ref).unlink()

    with pytest.raises(CatalogError, match="vanished"):
        [c async for c in cat.stream(master)]


def test_registry_builds_local(tmp_path: Path) -> None:
    cat = build_catalog("disk", LocalCatalogConfig(type="local", root=str(tmp_path)))
    assert isinstance(cat, LocalCatalog)
    assert cat.name == "disk"
    assert cat.root == tmp_path.resolve()


# -- probe (check-config --probe) -----------------------------------------------------------------


async def test_probe_lists_the_root(tmp_path: Path) -> None:
    put(tmp_path, "HRT-001/v2/en_US/9x16.mp4")
    put(tmp_path, "HRT-002/v1/en/1x1.mp4")
    assert await catalog(tmp_path).probe() == f"local folder {tmp_path.resolve()}: 2 items"


@pytest.mark.parametrize(("root", "says"), [("unmounted/masters", "No such file or directory"),
                                            ("a-file", "Not a directory")])
async def test_probe_of_a_root_that_is_not_a_folder_fails_naming_it(tmp_path: Path, root: str, says: str) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CatalogError) as info:
        await catalog(tmp_path / root).probe()
    assert str(info.value) == f"catalog disk: cannot list root folder {tmp_path.resolve() / root}: {says}"


# -- messy names, folder listings, range reads ------------------------------------------------------


async def test_messy_names_are_matched_by_the_layouts_pattern(
    tmp_path: Path, messy_files: dict[str, bytes], messy_case: tuple[str, str, list[tuple[str, str | None]]]
) -> None:
    for path, data in messy_files.items():
        put(tmp_path, path, data)
    layout, aspect, found = messy_case

    masters = await catalog(tmp_path, layout).find({**FIELDS, "code": "HRT-1212", "aspect": aspect}, "video")

    assert [(m.name, m.named_aspect) for m in masters] == found
    for m in masters:
        assert (m.object, m.size) == (f"HRT-1212/{m.name}", len(messy_files[m.object]))


async def test_list_folder_gives_files_with_sizes_and_subfolders(tmp_path: Path, messy_files: dict[str, bytes]) -> None:
    for path, data in messy_files.items():
        put(tmp_path, path, data)
    cat = catalog(tmp_path)

    listing = await cat.list_folder(["HRT-1212"])

    direct = sorted(path for path in messy_files if path.count("/") == 1)
    assert [m.object for m in listing.files] == direct
    assert [m.size for m in listing.files] == [len(messy_files[path]) for path in direct]
    assert all(Path(m.ref) == tmp_path.resolve() / m.object for m in listing.files)
    assert listing.folders == ["old"]
    assert await cat.list_folder([]) == Listing([], ["HRT-1212"])
    assert await cat.list_folder(["HRT-1212", "missing"]) == Listing()
    assert await cat.list_folder(["HRT-1212", "notes.txt"]) == Listing()  # a file, not a folder
    assert await cat.list_folder([".."]) == Listing()


async def test_a_resolve_lists_its_folder_once_for_every_aspect(tmp_path: Path) -> None:
    for aspect in ("9x16", "4x5", "1x1"):
        put(tmp_path, f"HRT-001/v2/en_US/{aspect}.mp4")
    cat = catalog(tmp_path)
    listings = Listings()

    [first] = await cat.find({**FIELDS, "aspect": "4x5"}, "video", listings)
    # The folder goes away: only the listing already made can still answer.
    (tmp_path / "HRT-001/v2/en_US").rename(tmp_path / "moved")
    later = [await cat.find({**FIELDS, "aspect": aspect}, "video", listings) for aspect in ("1x1", "9x16")]

    assert [first.name] + [m.name for [m] in later] == ["4x5.mp4", "1x1.mp4", "9x16.mp4"]
    assert await cat.find({**FIELDS, "aspect": "9x16"}, "video") == []  # a new resolve lists again


async def test_read_range_reads_exactly_the_range_asked(tmp_path: Path) -> None:
    data = put(tmp_path, "HRT-001/v2/en_US/9x16.mp4")
    cat = catalog(tmp_path)
    [master] = await cat.find(FIELDS, "video")

    assert await cat.read_range(master, 0, 16) == data[:16]
    assert await cat.read_range(master, 1000, 4096) == data[1000:5096]
    assert await cat.read_range(master, len(data) - 10, 100) == data[-10:]  # short at the end
    assert await cat.read_range(master, len(data) + 5, 100) == b""
    Path(master.ref).unlink()
    with pytest.raises(CatalogError, match="vanished"):
        await cat.read_range(master, 0, 16)
