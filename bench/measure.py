"""Measuring benchmark: what measuring a moov-at-end master costs, next to reading it for its transfer.

Before a master is uploaded, the resolve opens its stream (the first chunk,
``worker.chunk_bytes``, which the sniff reads and the upload goes on from) and
measures its picture from range reads: the first 256 KiB come from that chunk,
and an MP4 whose ``moov`` is at the end costs a 16-byte read of the box header
there and a read of the ``moov`` itself, through ``Catalog.read_range``. That
is the work measuring adds to a delivery; the transfer moves the whole master.

For each catalog (S3 on a moto server, the Drive v3 double from tests/support)
and size, the master is an MP4 made on disk: ``ftyp``, an ``mdat`` of zeros,
and the ``moov`` of tests/media/9x16.mp4 padded with a ``free`` box to a
``moov`` as big as an encoder writes for a video of that size (``MOOV_SHARE``).
A child process (its peak memory is that case's alone) builds the real catalog
from a config entry, finds the master through the layout, and ``--repeat``
times, alternating:

* measure: ``Opened.start`` (the GET and its first chunk), ``measure`` with the
  resolve's own reader (the head from that chunk, the rest by ranged reads,
  counted), then the stream closed: the whole and the ``measure`` call alone;
* transfer: the stream started and handed over as the upload takes it, read to
  its checked end into one reused buffer and hashed with SHA-256 (checked
  against the master's), on one thread: the read side of a transfer;
* one 16-byte ``read_range``: the peer's cost of a ranged read of this object.

It prints the medians, the ratio of measuring to the transfer's read side, the
bytes read by ranges over the size, and the child's peak RSS (VmHWM).

    .venv/bin/python bench/measure.py --sizes 100M,1G --catalogs s3,drive

Needs Linux (/proc) and the project's test extras (moto[server]); the servers
run in this process, in threads, while the child measures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import MiB, human, parse_size, vm_hwm

TESTS = Path(__file__).resolve().parent.parent / "tests"
SAMPLE = TESTS / "media" / "9x16.mp4"
BUCKET = "bench-measure"
# What ffmpeg writes as ``moov`` for H.264 at 30 fps with AAC audio is ~0.9 KB per second of video (the sample
# tables); at ~8 Mbit/s that is ~0.1% of the file: 100 KiB for 100 MiB, 1 MiB for 1 GiB.
MOOV_SHARE = 1 / 1024
FIELDS = {"project": "bench", "project_id": "p_bench", "variation": 2, "locale": "en", "aspect": "9x16",
          "kind": "video"}


# --- the master ---------------------------------------------------------------------------------


def sample_boxes(path: Path = SAMPLE) -> dict[bytes, bytes]:
    """The top-level boxes of a small MP4, by type (whole boxes, headers included)."""
    data, boxes, at = path.read_bytes(), {}, 0
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        boxes[data[at + 4:at + 8]] = data[at:at + length]
        at += length
    return boxes


def box(kind: bytes, size: int) -> bytes:
    """A box header: its 32-bit size (header included; 1 says a 64-bit size follows) and type."""
    return size.to_bytes(4, "big") + kind


def write_master(path: Path, size: int) -> str:
    """A ``size``-byte MP4 with its ``moov`` last, written in 1 MiB blocks; its SHA-256 hex.

    The sample's ``moov`` keeps its track header (the picture's size and matrix
    stay true; its sample offsets no longer point at frames), with a ``free``
    box inside it to the size a real ``moov`` of this size of video has.
    """
    boxes = sample_boxes()
    ftyp, moov = boxes[b"ftyp"], boxes[b"moov"]
    pad = max(0, int(size * MOOV_SHARE) - len(moov) - 8)
    moov = box(b"moov", len(moov) + 8 + pad) + moov[8:] + box(b"free", 8 + pad) + bytes(pad)
    whole = size - len(ftyp) - len(moov)
    if whole < 16:
        raise SystemExit(f"{human(size)} is too small for a master with a {len(moov)}-byte moov")
    # Past 4 GiB the mdat takes the 64-bit form: size 1, then the size in 8 bytes.
    mdat = box(b"mdat", whole) if whole < 1 << 32 else box(b"mdat", 1) + whole.to_bytes(8, "big")
    body = whole - len(mdat)
    sha, zeros = hashlib.sha256(), bytes(MiB)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for block in (ftyp, mdat):
            f.write(block)
            sha.update(block)
        for at in range(0, body, MiB):
            block = zeros[:min(MiB, body - at)]
            f.write(block)
            sha.update(block)
        f.write(moov)
        sha.update(moov)
    return sha.hexdigest()


# --- the peers, served from this process ---------------------------------------------------------


@contextmanager
def s3_peer(masters: dict[str, Path], env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A moto server holding each master (code -> file) under its layout path; the catalog's config."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request, on this bench's output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=BUCKET)
        for code, path in masters.items():
            s3.upload_file(str(path), BUCKET, f"{code}/v2/en/9x16.mp4")
        yield {"type": "s3", "bucket": BUCKET, "region": "us-east-1", "endpoint_url": endpoint}
    finally:
        server.stop()


@contextmanager
def drive_peer(masters: dict[str, Path], workdir: Path) -> Iterator[dict[str, Any]]:
    """The Drive double serving each master from its file on disk (never held in memory); the catalog's config."""
    from support.drive_double import run_drive_double

    with run_drive_double() as drive:
        root = drive.add_folder("Bench Masters")
        for code, path in masters.items():
            drive.add_file("9x16.mp4", drive.add_folders(f"{code}/v2/en", root), path=path, mime_type="video/mp4")
        yield {"type": "drive", "root_folder_id": root, "api_endpoint": drive.api_endpoint,
               "credentials_file": str(drive.write_service_account(workdir))}


# --- one case, in a child process ----------------------------------------------------------------


class _Counted:
    """A catalog's ``read_range``, counting the reads and their bytes."""

    def __init__(self, catalog: Any):
        self.catalog, self.reads, self.bytes = catalog, 0, 0

    async def read_range(self, master: Any, offset: int, length: int) -> bytes:
        data = await self.catalog.read_range(master, offset, length)
        self.reads, self.bytes = self.reads + 1, self.bytes + len(data)
        return data


async def measure_once(catalog: Any, master: Any, chunk: int) -> dict[str, Any]:
    """As the resolve measures a master: stream opened, picture measured, stream closed (no upload follows)."""
    from fulfiller.catalogs.base import Opened
    from fulfiller.delivery.resolve import _reader  # the resolve's own: head from the first chunk, rest by ranges
    from fulfiller.measure import measure

    counted = _Counted(catalog)
    started = time.perf_counter()
    opened = await Opened.start(catalog, master, chunk)
    try:
        began = time.perf_counter()
        measured = await measure(_reader(counted, master, opened.head), master.size)
        measuring = time.perf_counter() - began
    finally:
        await opened.aclose()
    if measured.aspect != "9x16":
        raise SystemExit(f"measured {measured} of {master.object}, not 9x16")
    return {"whole": time.perf_counter() - started, "measure": measuring, "reads": counted.reads,
            "bytes": counted.bytes}


async def transfer_once(catalog: Any, master: Any, chunk: int, expected: str) -> float:
    """The read side of a transfer: the stream as the upload takes it, read to its end and hashed; seconds."""
    from fulfiller.catalogs.base import Opened

    started = time.perf_counter()
    stream = (await Opened.start(catalog, master, chunk)).take()
    head, source = await stream.hand_over()  # type: ignore[union-attr]  # a SourceStream for S3 and Drive

    def pump() -> tuple[int, str]:
        sha, buffer = hashlib.sha256(head), bytearray(chunk)
        total = len(head)
        with memoryview(buffer) as view:
            try:
                while n := source.readinto(view):
                    sha.update(view[:n])
                    total += n
            finally:
                source.close()
        return total, sha.hexdigest()

    total, digest = await asyncio.to_thread(pump)
    elapsed = time.perf_counter() - started
    if (total, digest) != (master.size, expected):
        raise SystemExit(f"read {total} bytes hashing to {digest} of {master.object}, expected {master.size}, "
                         f"{expected}")
    return elapsed


async def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    from pydantic import TypeAdapter

    from fulfiller.catalogs.registry import build_catalog
    from fulfiller.config import CatalogConfig

    catalog = build_catalog("bench", TypeAdapter(CatalogConfig).validate_python(spec["catalog"]))
    try:
        found = await catalog.find({**FIELDS, "code": spec["code"]}, "video")  # also: token, connections
        if len(found) != 1:
            raise SystemExit(f"found {found} for {spec['code']}")
        master = found[0]
        runs: dict[str, list[Any]] = {"measure": [], "transfer": [], "range16": []}
        for _ in range(spec["repeat"]):
            runs["measure"].append(await measure_once(catalog, master, spec["chunk"]))
            runs["transfer"].append(await transfer_once(catalog, master, spec["chunk"], spec["sha256"]))
            began = time.perf_counter()
            await catalog.read_range(master, master.size // 2, 16)
            runs["range16"].append(time.perf_counter() - began)
    finally:
        await catalog.aclose()
    return {**runs, "hwm": vm_hwm(os.getpid())}


# --- the report ----------------------------------------------------------------------------------


def row(catalog: str, size: int, result: dict[str, Any]) -> list[str]:
    whole = statistics.median(r["whole"] for r in result["measure"])
    measuring = statistics.median(r["measure"] for r in result["measure"])
    reads, extra = result["measure"][0]["reads"], result["measure"][0]["bytes"]
    transfer = statistics.median(result["transfer"])
    return [catalog, human(size), f"{whole * 1e3:.1f}", f"{measuring * 1e3:.1f}", f"{reads} / {extra:,}",
            f"{statistics.median(result['range16']) * 1e3:.1f}", f"{transfer:.2f} ({size / transfer / MiB:.0f} MiB/s)",
            f"{measuring / transfer:.4f}", f"{whole / transfer:.4f}", f"{extra / size:.5f}",
            f"{result['hwm'] / 1e6:.1f}"]


HEADER = ["catalog", "size", "open+chunk+measure ms", "measure only ms", "range reads / bytes",
          "16-byte range ms", "transfer read+SHA-256 s", "measure/transfer", "whole/transfer", "extra bytes/size",
          "VmHWM MB"]


def report(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    print("\nmedians; measure/transfer = the measure call (range reads + parsing) over the transfer's read side; "
          "VmHWM: the measuring process's peak")
    for r in [HEADER, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(r, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100M,1G", type=lambda s: [parse_size(x) for x in s.split(",")],
                        help="master sizes (default 100M,1G)")
    parser.add_argument("--catalogs", default="s3,drive", type=lambda s: s.split(","),
                        help="catalogs to read from: s3, drive (default both)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per case; medians reported")
    parser.add_argument("--chunk", type=int, default=MiB, help="the stream's chunk (worker.chunk_bytes)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child: one case's JSON spec
    args = parser.parse_args()
    if args.case:
        print(json.dumps(asyncio.run(run_case(json.loads(args.case)))))
        return 0
    if unknown := set(args.catalogs) - {"s3", "drive"}:
        parser.error(f"unknown catalogs {sorted(unknown)}")
    sys.path.insert(0, str(TESTS))
    from support.moto_server import DUMMY_AWS_ENV, UNSET_AWS_ENV

    env = {k: v for k, v in os.environ.items() if k not in UNSET_AWS_ENV} | DUMMY_AWS_ENV
    env |= {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    tmp = Path(tempfile.mkdtemp(prefix="bench-measure-"))
    try:
        masters, hashes = {}, {}
        for size in args.sizes:
            code = f"MEASURE-{human(size)}"
            masters[code] = tmp / "masters" / f"{code}.mp4"
            print(f"writing the {human(size)} master ...", flush=True)
            hashes[code] = write_master(masters[code], size)
        rows = []
        for name in args.catalogs:
            print(f"serving the masters from {name} ...", flush=True)
            with s3_peer(masters, env) if name == "s3" else drive_peer(masters, tmp) as config:
                for size, code in zip(args.sizes, masters, strict=True):
                    spec = {"catalog": config, "code": code, "sha256": hashes[code], "repeat": args.repeat,
                            "chunk": args.chunk}
                    print(f"  {name} {human(size)} ...", flush=True)
                    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], env=env, check=True,
                                         stdout=subprocess.PIPE).stdout
                    rows.append(row(name, size, json.loads(out)))
        report(rows)
        # The peers ran here: moto reads a whole object into memory for any GET of it, ranged or not.
        print(f"this process (the peers' servers): VmHWM {vm_hwm(os.getpid()) / 1e6:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
