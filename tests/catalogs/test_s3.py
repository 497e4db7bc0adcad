"""S3Catalog against a real S3 API (moto's server) over HTTP."""

from __future__ import annotations

import hashlib
import logging
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from fulfiller.catalogs.base import CatalogError, CatalogUnavailable, Listing, Listings, Master
from fulfiller.catalogs.registry import build_catalog
from fulfiller.catalogs.s3 import S3Catalog
from fulfiller.config import DEFAULT_LAYOUT, S3CatalogConfig
from support.masters import FIELDS, MP4

FOLDER = "HRT-001/v2/en_US/"


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"masters-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def catalog(endpoint: str, bucket: str, **cfg: Any) -> S3Catalog:
    return S3Catalog.from_config(
        "bucket", S3CatalogConfig(type="s3", bucket=bucket, endpoint_url=endpoint, region="us-east-1", **cfg)
    )


@pytest.fixture
def closed_port(aws_test_env: None) -> int:
    """A port nothing listens on: bound once to learn a free number, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_find_fills_every_placeholder(moto_endpoint: str, s3: Any, bucket: str) -> None:
    key = "hearty/p_42/video/HRT-001/v2/en_US/9x16.mp4"
    s3.put_object(Bucket=bucket, Key=key, Body=MP4)
    cat = catalog(moto_endpoint, bucket, layout="{project}/{project_id}/{kind}/{code}/v{variation}/{locale}/{aspect}")

    [master] = await cat.find(FIELDS, "video")

    assert master.catalog == "bucket"
    assert master.object == f"s3://{bucket}/{key}"
    assert master.ref == key
    assert master.name == "9x16.mp4"
    assert master.size == len(MP4)
    assert master.md5 == hashlib.md5(MP4).hexdigest()


async def test_extensions_are_case_blind(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9X16.MP4", Body=MP4)
    [master] = await catalog(moto_endpoint, bucket).find(FIELDS, "video")
    assert master.name == "9X16.MP4"


async def test_choice_among_extensions_is_deterministic(moto_endpoint: str, s3: Any, bucket: str) -> None:
    for name in ["9x16.mkv", "9x16.webm", "9x16.MOV", "9x16.mp4"]:
        s3.put_object(Bucket=bucket, Key=FOLDER + name, Body=MP4)
    masters = await catalog(moto_endpoint, bucket).find(FIELDS, "video")
    assert [m.name for m in masters] == ["9x16.mp4", "9x16.MOV", "9x16.webm", "9x16.mkv"]


async def test_wrong_kind_subfolders_and_markers_are_ignored(moto_endpoint: str, s3: Any, bucket: str) -> None:
    for key in ["9x16.jpg", "9x16.mp4.part", "9x16_old.mp4", "old/9x16.mp4", "9x16.mp4/", ""]:
        s3.put_object(Bucket=bucket, Key=FOLDER + key, Body=b"")
    cat = catalog(moto_endpoint, bucket)

    assert await cat.find(FIELDS, "video") == []
    assert [m.name for m in await cat.find(FIELDS, "image")] == ["9x16.jpg"]


async def test_keys_needing_url_encoding(moto_endpoint: str, s3: Any, bucket: str) -> None:
    key = "Été 2024+HRT/v2/en_US/9x16 final.mp4"
    s3.put_object(Bucket=bucket, Key=key, Body=MP4)
    fields = {**FIELDS, "code": "Été 2024+HRT"}

    cat = catalog(moto_endpoint, bucket, layout="{code}/v{variation}/{locale}/{aspect} final")
    [master] = await cat.find(fields, "video")

    assert master.ref == key
    assert b"".join([c async for c in cat.stream(master)]) == MP4


async def test_missing_folder_is_not_found(moto_endpoint: str, bucket: str) -> None:
    assert await catalog(moto_endpoint, bucket).find(FIELDS, "video") == []


async def test_a_code_holding_a_slash_is_one_segment_not_two(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="HRT/001/v2/en_US/9x16.mp4", Body=MP4)  # what a split code would find
    assert await catalog(moto_endpoint, bucket).find({**FIELDS, "code": "HRT/001"}, "video") == []


@pytest.mark.parametrize("code", ["HRT/001", "/".join(["s"] * 2000), "..", "a\\b", "x\ty", "C" * 300])
async def test_a_code_that_is_not_one_safe_segment_makes_no_request(closed_port: int, code: str) -> None:
    # Nothing listens there: any request would end CatalogUnavailable (and be retried for an hour).
    cat = catalog(f"http://127.0.0.1:{closed_port}", "masters")
    assert await cat.find({**FIELDS, "code": code}, "video") == []
    await cat.aclose()


async def test_finds_past_the_first_page(moto_endpoint: str, s3: Any, bucket: str) -> None:
    # S3 returns at most 1000 keys per page; the master sorts after all of them.
    names = [f"{i:04d}.jpg" for i in range(1004)] + ["9x16.mp4"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: s3.put_object(Bucket=bucket, Key=FOLDER + n, Body=b"x"), names))
    assert s3.list_objects_v2(Bucket=bucket, Prefix=FOLDER)["IsTruncated"]  # really two pages

    [master] = await catalog(moto_endpoint, bucket).find(FIELDS, "video")

    assert master.ref == FOLDER + "9x16.mp4"


@pytest.mark.parametrize("prefix", ["masters", "masters/", "/masters/"])
async def test_prefix(moto_endpoint: str, s3: Any, bucket: str, prefix: str) -> None:
    s3.put_object(Bucket=bucket, Key="masters/" + FOLDER + "9x16.mp4", Body=MP4)
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mov", Body=MP4)  # outside the prefix

    [master] = await catalog(moto_endpoint, bucket, prefix=prefix).find(FIELDS, "video")

    assert master.ref == "masters/" + FOLDER + "9x16.mp4"
    assert master.object == f"s3://{bucket}/masters/{FOLDER}9x16.mp4"


async def test_multipart_etag_is_not_an_md5(moto_endpoint: str, s3: Any, bucket: str) -> None:
    key = FOLDER + "9x16.mp4"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)
    part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=MP4)
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )

    [master] = await catalog(moto_endpoint, bucket).find(FIELDS, "video")

    assert master.md5 is None
    assert master.size == len(MP4)


async def test_stream_from_offset_gives_exact_bytes(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=MP4)
    cat = catalog(moto_endpoint, bucket)
    [master] = await cat.find(FIELDS, "video")

    chunks = [c async for c in cat.stream(master, start=1000, chunk_size=1024)]

    assert b"".join(chunks) == MP4[1000:]
    assert max(len(c) for c in chunks) <= 1024
    assert b"".join([c async for c in cat.stream(master)]) == MP4
    assert [c async for c in cat.stream(master, start=len(MP4))] == []


async def test_empty_object_streams_nothing(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=b"")
    cat = catalog(moto_endpoint, bucket)
    [master] = await cat.find(FIELDS, "video")
    assert [c async for c in cat.stream(master)] == []


async def test_vanished_object_is_a_catalog_error(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=MP4)
    cat = catalog(moto_endpoint, bucket)
    [master] = await cat.find(FIELDS, "video")
    s3.delete_object(Bucket=bucket, Key=FOLDER + "9x16.mp4")

    with pytest.raises(CatalogError, match="vanished"):
        [c async for c in cat.stream(master)]


async def test_replaced_object_is_not_spliced(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=MP4)
    cat = catalog(moto_endpoint, bucket)
    [master] = await cat.find(FIELDS, "video")
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=b"a newer master")

    with pytest.raises(CatalogUnavailable, match="changed"):
        [c async for c in cat.stream(master, start=1000)]


async def test_missing_bucket_is_a_catalog_error(moto_endpoint: str) -> None:
    cat = catalog(moto_endpoint, f"absent-{uuid.uuid4().hex[:12]}")
    with pytest.raises(CatalogError, match="does not exist"):
        await cat.find(FIELDS, "video")


async def test_unreachable_endpoint_is_unavailable(closed_port: int) -> None:
    cat = catalog(f"http://127.0.0.1:{closed_port}", "masters")
    with pytest.raises(CatalogUnavailable):
        await cat.find(FIELDS, "video")
    await cat.aclose()


async def test_registry_builds_s3(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=MP4)
    cfg = S3CatalogConfig(type="s3", bucket=bucket, endpoint_url=moto_endpoint, layout=DEFAULT_LAYOUT)
    cat = build_catalog("bucket", cfg)
    assert isinstance(cat, S3Catalog)
    [master] = await cat.find(FIELDS, "video")
    assert master.size == len(MP4)
    await cat.aclose()


# -- probe (check-config --probe) -----------------------------------------------------------------


async def test_probe_lists_the_top_of_the_catalog(moto_endpoint: str, s3: Any, bucket: str) -> None:
    for key in ["masters/HRT-001/v2/en_US/9x16.mp4", "masters/HRT-002/v1/en/1x1.mp4", "masters/README.txt",
                "elsewhere/x.mp4"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    assert await catalog(moto_endpoint, bucket, prefix="masters").probe() == (
        f"s3://{bucket}/masters/: 3 items visible")
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"many/{i}.mp4", Body=b"")
    assert await catalog(moto_endpoint, bucket, prefix="many").probe() == f"s3://{bucket}/many/: 10+ items visible"


async def test_probe_of_a_missing_bucket_names_it(moto_endpoint: str) -> None:
    name = f"absent-{uuid.uuid4().hex[:12]}"
    with pytest.raises(CatalogError, match=f"bucket '{name}': the bucket does not exist"):
        await catalog(moto_endpoint, name).probe()


async def test_probe_of_an_unreachable_endpoint_fails(closed_port: int) -> None:
    cat = catalog(f"http://127.0.0.1:{closed_port}", "masters")
    with pytest.raises(CatalogUnavailable, match="list the root in bucket 'masters'"):
        await cat.probe()
    await cat.aclose()


# -- messy names, folder listings, range reads ------------------------------------------------------


def listings_of(caplog: pytest.LogCaptureFixture, bucket: str) -> list[str]:
    """The ListObjectsV2 requests moto's server logged for ``bucket``."""
    return [r.getMessage() for r in caplog.records
            if r.name == "werkzeug" and f"/{bucket}?list-type=2" in r.getMessage()]


async def test_messy_names_are_matched_by_the_layouts_pattern(
    moto_endpoint: str, s3: Any, bucket: str, messy_files: dict[str, bytes],
    messy_case: tuple[str, str, list[tuple[str, str | None]]],
) -> None:
    for key, data in messy_files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    layout, aspect, found = messy_case

    masters = await catalog(moto_endpoint, bucket, layout=layout).find(
        {**FIELDS, "code": "HRT-1212", "aspect": aspect}, "video")

    assert [(m.name, m.named_aspect) for m in masters] == found
    for m in masters:
        assert (m.object, m.size) == (f"s3://{bucket}/{m.ref}", len(messy_files[m.ref]))
        assert m.version == hashlib.md5(messy_files[m.ref]).hexdigest()


async def test_list_folder_gives_objects_with_sizes_and_subfolders(
    moto_endpoint: str, s3: Any, bucket: str, messy_files: dict[str, bytes]
) -> None:
    for key, data in messy_files.items():
        s3.put_object(Bucket=bucket, Key=f"masters/{key}", Body=data)
    s3.put_object(Bucket=bucket, Key="masters/HRT-1212/empty/", Body=b"")  # a folder marker some tools make
    cat = catalog(moto_endpoint, bucket, prefix="masters")

    listing = await cat.list_folder(["HRT-1212"])

    direct = sorted(key for key in messy_files if key.count("/") == 1)
    assert [m.ref for m in listing.files] == [f"masters/{key}" for key in direct]
    assert [m.size for m in listing.files] == [len(messy_files[key]) for key in direct]
    assert listing.folders == ["empty", "old"]
    assert await cat.list_folder([]) == Listing([], ["HRT-1212"])
    assert await cat.list_folder(["HRT-1212", "empty"]) == Listing()
    assert await cat.list_folder(["HRT-404"]) == Listing()


async def test_a_resolve_lists_its_prefix_once_for_every_aspect(
    moto_endpoint: str, s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    for aspect in ("9x16", "4x5", "1x1"):
        s3.put_object(Bucket=bucket, Key=f"{FOLDER}{aspect}.mp4", Body=MP4)
    cat = catalog(moto_endpoint, bucket)
    listings = Listings()

    found = [await cat.find({**FIELDS, "aspect": aspect}, "video", listings) for aspect in ("4x5", "1x1", "9x16")]

    assert [m.name for [m] in found] == ["4x5.mp4", "1x1.mp4", "9x16.mp4"]
    assert len(listings_of(caplog, bucket)) == 1
    await cat.find(FIELDS, "video")  # another resolve
    assert len(listings_of(caplog, bucket)) == 2


async def test_read_range_gets_only_the_range_of_the_version_found(moto_endpoint: str, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=MP4)
    cat = catalog(moto_endpoint, bucket)
    [master] = await cat.find(FIELDS, "video")

    assert await cat.read_range(master, 0, 16) == MP4[:16]
    assert await cat.read_range(master, 1000, 4096) == MP4[1000:5096]
    assert await cat.read_range(master, len(MP4) - 10, 100) == MP4[-10:]  # short at the end
    assert await cat.read_range(master, len(MP4), 100) == b""
    s3.put_object(Bucket=bucket, Key=FOLDER + "9x16.mp4", Body=b"a newer master, not measured as the old")
    with pytest.raises(CatalogUnavailable, match="changed since it was listed"):
        await cat.read_range(master, 0, 16)
    s3.delete_object(Bucket=bucket, Key=FOLDER + "9x16.mp4")
    with pytest.raises(CatalogError, match="vanished"):
        await cat.read_range(master, 0, 16)


async def test_read_range_of_an_unreachable_store_is_unavailable(closed_port: int) -> None:
    cat = catalog(f"http://127.0.0.1:{closed_port}", "masters")
    master = Master("bucket", "s3://masters/k.mp4", "k.mp4", 100, ref="k.mp4")
    with pytest.raises(CatalogUnavailable, match="read s3://masters/k.mp4"):
        await cat.read_range(master, 0, 16)
    await cat.aclose()
