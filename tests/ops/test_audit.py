"""``fulfiller audit`` on a messy catalog with planted problems: a local folder, S3 (moto's server), Drive (the double).

The catalog is made of the real media fixtures, named as creative teams name
them, with noise a walk must pass by (stray files, folders the layout does not
name, files in a leaf's subfolder). Each test asserts the exact set of
problems: every planted one, and nothing else.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig

from fulfiller.catalogs.base import CatalogUnavailable, Master
from fulfiller.catalogs.local import LocalCatalog
from fulfiller.config import Config, WorkerConfig, load_config
from fulfiller.measure import HEAD_BYTES
from fulfiller.ops.audit import CONCURRENCY, TRIES, Progress, audit
from fulfiller.ops.audit_report import CatalogReport
from fulfiller.ops.audit_walk import Calls, Walk
from support.drive_double import DriveDouble, run_drive_double
from support.masters import MEDIA, media
from support.moto_server import aws_test_env, moto_endpoint  # noqa: F401  (fixtures)
from support.servers import fulfiller_command

LAYOUT = "{code}/v{variation}/{locale}/*{aspect}*"
CASES = MEDIA / "cases"
GARBAGE = b"this is not a master, and a walk that reads it reports it"

# path in the catalog -> bytes
MESSY: dict[str, bytes] = {
    # A clean creative with messy names; the noise around it must not be reported.
    "CLEAN-1/v1/en/CLEAN-1_final_9_16.mp4": media("9x16.mp4"),
    "CLEAN-1/v1/en/Feed 4x5 FINAL.jpg": media("4x5.jpg"),
    "CLEAN-1/v1/en/1x1.webm": media("1x1.webm"),
    "CLEAN-1/v1/en/notes.txt": GARBAGE,  # no video or image extension
    "CLEAN-1/v1/en/thumbnail.png": GARBAGE,  # spells no aspect: the layout does not name it
    "CLEAN-1/v1/en/old/9x16.mp4": GARBAGE,  # below the leaf
    "CLEAN-1/drafts/en/9x16.mp4": GARBAGE,  # not v{variation}
    "CLEAN-1/vfinal/en/9x16.mp4": GARBAGE,  # v{variation} holds a number
    "README.txt": GARBAGE,
    # Named 9x16, really square.
    "MISLABEL-1/v1/en/9x16.mp4": (CASES / "mislabelled" / "9x16.mp4").read_bytes(),
    "MISLABEL-1/v1/en/4x5.mov": media("4x5.mov"),
    # Cut before its moov; an image saved as .mp4; a good image beside them.
    "BROKEN-1/v2/fr/9x16.mp4": media("9x16.mp4")[:3000],
    "BROKEN-1/v2/fr/4x5.mp4": media("4x5.jpg"),
    "BROKEN-1/v2/fr/1x1.png": media("1x1.png"),
    # Two 9x16 videos (one spelled in pixels); a 9x16 image is another kind, not a duplicate.
    "DUP-1/v1/en/9x16.mp4": media("9x16.mp4"),
    "DUP-1/v1/en/Story 1080x1920.webm": media("9x16.webm"),
    "DUP-1/v1/en/9x16.jpg": media("9x16.jpg"),
    # Coded landscape, displayed 9x16 after rotation: correct.
    "ROT-1/v3/de/9x16.mp4": (CASES / "rotated_90.mp4").read_bytes(),
    "ROT-1/v3/de/9x16.jpg": (CASES / "orientation_6.jpg").read_bytes(),
    "ROT-1/v3/fr/9-16.mov": (CASES / "rotated_270.mov").read_bytes(),
    "ROT-1/v3/fr/720x1280.avif": (CASES / "irot_270.avif").read_bytes(),
    # moov past the first 256 KiB: measured from a second range read.
    "LATE-1/v1/en/9x16.mp4": (CASES / "moov_after_head.mp4").read_bytes(),
}
# What the audit must find: per creative, the aspects each kind can deliver, and the problems.
EXPECTED_ASPECTS = {
    ("BROKEN-1", 2, "fr"): {"video": [], "image": ["1x1"]},
    ("CLEAN-1", 1, "en"): {"video": ["1x1", "9x16"], "image": ["4x5"]},
    ("DUP-1", 1, "en"): {"video": ["9x16"], "image": ["9x16"]},
    ("LATE-1", 1, "en"): {"video": ["9x16"], "image": []},
    ("MISLABEL-1", 1, "en"): {"video": ["4x5"], "image": []},
    ("ROT-1", 3, "de"): {"video": ["9x16"], "image": ["9x16"]},
    ("ROT-1", 3, "fr"): {"video": ["9x16"], "image": ["9x16"]},
}
EXPECTED_PROBLEMS = {
    (("MISLABEL-1", 1, "en"), "mislabelled", "MISLABEL-1/v1/en/9x16.mp4", "named 9x16, measured 1x1"),
    (("BROKEN-1", 2, "fr"), "unreadable", "BROKEN-1/v2/fr/9x16.mp4", "cannot be measured"),
    (("BROKEN-1", 2, "fr"), "unreadable", "BROKEN-1/v2/fr/4x5.mp4", "is image/jpeg, not a video"),
    (("DUP-1", 1, "en"), "duplicate", "DUP-1/v1/en/9x16.mp4, DUP-1/v1/en/Story 1080x1920.webm", "video 9x16"),
}
MATCHED_FILES = 16  # MESSY's files the layout names


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


def write_config(path: Path, catalogs: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"catalogs": catalogs, "routes": [{"catalog": next(iter(catalogs))}],
                                "worker": {"retry_base_s": 0.01, "retry_max_s": 0.05}}))
    return path


def findings(doc: dict[str, Any], strip: str = "") -> tuple[dict[tuple, Any], set[tuple]]:
    """The audit's JSON as (aspects per creative, problems), objects relative to the catalog's root."""
    [catalog] = doc["catalogs"]
    assert catalog["errors"] == []
    aspects, problems = {}, set()
    for creative in catalog["creatives"]:
        key = (creative["code"], creative["variation"], creative["locale"])
        assert creative["project"] is None and creative["project_id"] is None
        aspects[key] = creative["aspects"]
        for p in creative["problems"]:
            if p["problem"] == "duplicate":
                problems.add((key, "duplicate", ", ".join(o.removeprefix(strip) for o in p["objects"]),
                              f"{p['kind']} {p['aspect']}"))
            elif p["problem"] == "mislabelled":
                problems.add((key, "mislabelled", p["object"].removeprefix(strip),
                              f"named {p['named']}, measured {p['measured']}"))
            else:
                problems.add((key, "unreadable", p["object"].removeprefix(strip), p["reason"].split(":")[0]))
    assert doc["problems"] == catalog["problems"] == len(problems)
    return aspects, problems


@pytest.fixture(scope="module")
def local_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    write_tree(root / "masters", MESSY)
    return write_config(root / "fulfiller.json", {"masters": {"type": "local", "root": str(root / "masters"),
                                                              "layout": LAYOUT}})


@pytest.fixture(scope="module")
def s3_config(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Path]:  # noqa: F811
    s3 = boto3.session.Session().client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                                        config=BotoConfig(s3={"addressing_style": "path"}))
    bucket = f"masters-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    for key, data in MESSY.items():
        s3.put_object(Bucket=bucket, Key=f"team/{key}", Body=data)
    root = tmp_path_factory.mktemp("audit-s3")
    yield write_config(root / "fulfiller.json", {
        "masters-s3": {"type": "s3", "bucket": bucket, "prefix": "team", "region": "us-east-1",
                       "endpoint_url": moto_endpoint, "layout": LAYOUT}})
    s3.close()


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DriveDouble, Path]]:
    with run_drive_double() as double:
        root = double.add_folder("Masters")
        for path, data in MESSY.items():
            folder, _, name = path.rpartition("/")
            double.add_file(name, double.add_folders(folder, root) if folder else root, data)
        where = tmp_path_factory.mktemp("audit-drive")
        yield double, write_config(where / "fulfiller.json", {
            "masters-drive": {"type": "drive", "root_folder_id": root, "api_endpoint": double.api_endpoint,
                              "credentials_file": str(double.write_service_account(where)), "layout": LAYOUT}})


async def run_audit(config: Config, *args: Any) -> tuple[int, dict[str, Any], str]:
    out: list[str] = []
    err = io.StringIO()
    status = await audit(config, None, *args, True, out.append, err)
    return status, json.loads("".join(out)), err.getvalue()


async def test_local_catalog_every_planted_problem_and_nothing_else(local_config: Path) -> None:
    status, doc, err = await run_audit(load_config(local_config, need_secrets=False), None)
    assert status == 1
    assert findings(doc) == (EXPECTED_ASPECTS, EXPECTED_PROBLEMS)
    assert sum(len(c["files"]) for c in doc["catalogs"][0]["creatives"]) == MATCHED_FILES
    assert err.splitlines()[-1].endswith(f"{MATCHED_FILES}/{MATCHED_FILES} file(s) measured")


async def test_s3_catalog_every_planted_problem_and_nothing_else(s3_config: Path) -> None:
    config = load_config(s3_config, need_secrets=False)
    status, doc, _ = await run_audit(config, None)
    assert status == 1
    bucket = config.catalogs["masters-s3"].bucket  # type: ignore[union-attr]
    assert findings(doc, f"s3://{bucket}/team/") == (EXPECTED_ASPECTS, EXPECTED_PROBLEMS)


async def test_drive_catalog_throttled_every_planted_problem_and_nothing_else(
        drive: tuple[DriveDouble, Path]) -> None:
    double, config = drive
    double.fail_next(3, 429, "rateLimitExceeded", retry_after=0, kind="media")  # waited out with the backoff
    status, doc, _ = await run_audit(load_config(config, need_secrets=False), None)
    assert status == 1
    assert findings(doc, "drive:") == (EXPECTED_ASPECTS, EXPECTED_PROBLEMS)
    media_hits = double.hits_of("media")
    assert [hit.status for hit in media_hits].count(429) == 3
    assert all(hit.range for hit in media_hits)  # range reads only, never a download


async def test_the_file_entries_show_what_was_measured(local_config: Path) -> None:
    _, doc, _ = await run_audit(load_config(local_config, need_secrets=False), "ROT-*")
    files = {f["object"]: f for c in doc["catalogs"][0]["creatives"] for f in c["files"]}
    assert files["ROT-1/v3/de/9x16.mp4"] == {
        "object": "ROT-1/v3/de/9x16.mp4", "kind": "video", "bytes": len(MESSY["ROT-1/v3/de/9x16.mp4"]),
        "named": "9x16", "type": "video/mp4", "error": None,
        "measured": {"width": 180, "height": 320, "rotation": 90, "aspect": "9x16"},
    }
    assert files["ROT-1/v3/fr/720x1280.avif"]["measured"]["rotation"] == 270
    assert doc["problems"] == 0


def audit_command(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fulfiller_command(), "audit", "--config", str(config), *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_command_prints_a_table_with_problems_under_their_creative_and_exits_1(local_config: Path) -> None:
    done = audit_command(local_config)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"catalog masters (layout {LAYOUT})"
    assert lines[1].split() == ["CODE", "VARIATION", "LOCALE", "VIDEO", "IMAGE", "PROBLEMS"]
    rows = {tuple(line.split()[:3]): line for line in lines[2:-1] if not line.startswith(" ")}
    assert [key[0] for key in rows] == ["BROKEN-1", "CLEAN-1", "DUP-1", "LATE-1", "MISLABEL-1", "ROT-1", "ROT-1"]
    assert rows[("CLEAN-1", "1", "en")].split()[3:] == ["1x1", "9x16", "4x5", "ok"]
    assert rows[("BROKEN-1", "2", "fr")].split()[3:] == ["-", "1x1", "2"]
    assert rows[("ROT-1", "3", "fr")].split()[3:] == ["9x16", "9x16", "ok"]
    # Columns line up: each row's PROBLEMS cell starts where the header's does.
    assert {row.rindex(row.split()[-1]) for row in rows.values()} == {lines[1].index("PROBLEMS")}
    mislabelled = lines.index(rows[("MISLABEL-1", "1", "en")])
    assert lines[mislabelled + 1] == "    mislabelled: MISLABEL-1/v1/en/9x16.mp4 is named 9x16 but measures 1x1"
    assert ("    duplicate: 2 videos for 9x16 (a delivery takes the first): DUP-1/v1/en/9x16.mp4, "
            "DUP-1/v1/en/Story 1080x1920.webm") in lines
    assert "    unreadable: BROKEN-1/v2/fr/4x5.mp4: is image/jpeg, not a video" in lines
    assert lines[-1] == f"7 creative(s), {MATCHED_FILES} file(s), 4 problem(s)"
    # Not a terminal: progress comes as whole lines on stderr, the last with the final count.
    progress = [line for line in done.stderr.splitlines() if line.startswith("audit masters:")]
    # Listed: the root, 6 codes, 6 variations, 7 locales (never drafts/, vfinal/ or old/).
    assert progress[-1] == f"audit masters: 20 folder(s) listed, {MATCHED_FILES}/{MATCHED_FILES} file(s) measured"
    assert "\r" not in done.stderr


def test_json_for_a_clean_selection_exits_0_and_lists_only_matching_codes(local_config: Path) -> None:
    done = audit_command(local_config, "--json", "--code", "CLEAN-*")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # stdout is the document alone; progress went to stderr
    assert findings(doc) == ({("CLEAN-1", 1, "en"): EXPECTED_ASPECTS[("CLEAN-1", 1, "en")]}, set())
    assert "3/3 file(s) measured" in done.stderr


def test_an_unknown_catalog_is_a_usage_error_naming_the_configured_ones(local_config: Path) -> None:
    done = audit_command(local_config, "--catalog", "nope")
    assert done.returncode == 2
    assert "no catalog named 'nope'; configured: masters" in done.stderr
    assert done.stdout == ""


class Watched(LocalCatalog):
    """A local catalog that counts what is asked of it, and answers "try later" where told to."""

    def __init__(self, root: Path, layout: str = LAYOUT, *, unavailable: dict[str, int] | None = None):
        super().__init__("watched", layout, root)
        self.unavailable = dict(unavailable or {})  # object or folder -> failures left before it answers
        self.listed: list[str] = []
        self.reads: list[tuple[str, int, int]] = []
        self.in_flight = self.most_in_flight = 0

    def _maybe_unavailable(self, what: str) -> None:
        if self.unavailable.get(what, 0) > 0:
            self.unavailable[what] -= 1
            raise CatalogUnavailable(f"{what}: rate limited", retry_after=7.0)

    async def list_in(self, folders: list[str]) -> Any:
        self.listed.append("/".join(folders))
        self._maybe_unavailable("/".join(folders))
        return await super().list_in(folders)

    async def read_range(self, master: Master, offset: int, length: int) -> bytes:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self.reads.append((master.object, offset, length))
            self._maybe_unavailable(master.object)
            return await super().read_range(master, offset, length)
        finally:
            self.in_flight -= 1

    def stream(self, master: Master, start: int = 0, chunk_size: int = 1 << 20) -> Any:
        raise AssertionError("an audit never downloads a master")


async def walk(catalog: Watched, code_glob: str | None = None) -> tuple[Walk, CatalogReport, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    walker = Walk(catalog, Calls(WorkerConfig(retry_base_s=0.01, retry_max_s=0.05), CONCURRENCY, TRIES, sleep),
                  code_glob)
    await walker.run()
    return walker, CatalogReport.build(catalog.name, catalog.layout, walker.checked, walker.errors), waits


async def test_only_range_reads_a_few_at_a_time_and_never_a_download(tmp_path: Path) -> None:
    write_tree(tmp_path, MESSY)
    catalog = Watched(tmp_path)
    walker, report, _ = await walk(catalog)
    assert report.problem_count == len(EXPECTED_PROBLEMS)
    assert 1 < catalog.most_in_flight <= CONCURRENCY
    assert max(length for _, _, length in catalog.reads) <= HEAD_BYTES
    late = [(offset, length) for obj, offset, length in catalog.reads if obj == "LATE-1/v1/en/9x16.mp4"]
    assert late[0] == (0, HEAD_BYTES) and len(late) > 1  # its moov came from a read of its own
    assert sum(length for _, length in late) < len(MESSY["LATE-1/v1/en/9x16.mp4"])
    # No stray file was read.
    assert {obj for obj, _, _ in catalog.reads} == {path for path, data in MESSY.items() if data is not GARBAGE}


async def test_code_glob_prunes_the_walk_before_listing_other_creatives(tmp_path: Path) -> None:
    write_tree(tmp_path, MESSY)
    catalog = Watched(tmp_path)
    walker, report, _ = await walk(catalog, "DUP-*")
    assert sorted(catalog.listed) == ["", "DUP-1", "DUP-1/v1", "DUP-1/v1/en"]
    assert [c.key.code for c in report.creatives] == ["DUP-1"]


async def test_an_unavailable_catalog_is_waited_for_with_the_worker_backoff_then_given_up_on(tmp_path: Path) -> None:
    write_tree(tmp_path, MESSY)
    catalog = Watched(tmp_path, unavailable={
        "DUP-1/v1/en/9x16.jpg": TRIES - 1,  # answers on the last try
        "CLEAN-1/v1/en/1x1.webm": 100,  # never answers
        "ROT-1/v3/fr": 100,  # a folder that cannot be listed
    })
    _, report, waits = await walk(catalog)
    # Every wait honours the catalog's Retry-After (7 s), though the worker's own backoff is far shorter.
    assert waits and all(wait >= 7.0 for wait in waits)
    assert len(waits) == 3 * (TRIES - 1)  # the last failure of a hopeless call is not waited for
    assert report.errors == [("ROT-1/v3/fr", f"catalog unavailable after {TRIES} tries: ROT-1/v3/fr: rate limited")]
    problems = {(p.problem, p.objects[0], p.reason) for c in report.creatives for p in c.problems}
    assert ("unreadable", "CLEAN-1/v1/en/1x1.webm",
            f"catalog unavailable after {TRIES} tries: CLEAN-1/v1/en/1x1.webm: rate limited") in problems
    dup = next(c for c in report.creatives if c.key.code == "DUP-1")
    assert dup.aspects["image"] == ["9x16"]  # measured once the catalog answered
    assert report.problem_count == len(EXPECTED_PROBLEMS) + 2


async def test_other_layouts_without_aspect_flat_and_with_kind_and_aspect_folders(
        tmp_path: Path) -> None:
    write_tree(tmp_path / "by-measure", {
        "hearty/HRT-1/en/HRT-1 story cut.mp4": media("9x16.mp4"),
        "hearty/HRT-1/en/HRT-1 story alt.mov": (CASES / "rotated_270.mov").read_bytes(),  # also 9x16: duplicate
        "hearty/HRT-1/en/HRT-1 feed.webm": media("4x5.webm"),
        "hearty/HRT-1/en/other.mp4": GARBAGE,  # not {code}*
    })
    _, report, _ = await walk(Watched(tmp_path / "by-measure", "{project}/{code}/{locale}/{code}*"))
    [creative] = report.creatives
    assert (creative.key.project, creative.key.code, creative.key.variation, creative.key.locale) == (
        "hearty", "HRT-1", None, "en")
    assert creative.aspects == {"video": ["4x5", "9x16"], "image": []}
    assert [(p.problem, p.objects) for p in creative.problems] == [
        ("duplicate", ("hearty/HRT-1/en/HRT-1 story cut.mp4", "hearty/HRT-1/en/HRT-1 story alt.mov"))]

    write_tree(tmp_path / "flat", {
        "HRT-1212_final_1080x1920.mp4": media("9x16.mp4"),
        "HRT-1212_4x5.mp4": media("1x1.mp4"),  # mislabelled
        "HRT-77_1x1.png": media("1x1.png"),
    })
    _, report, _ = await walk(Watched(tmp_path / "flat", "{code}_*{aspect}"))
    summary = {c.key.code: (c.aspects, [(p.problem, p.objects[0]) for p in c.problems]) for c in report.creatives}
    assert summary == {
        "HRT-1212": ({"video": ["9x16"], "image": []}, [("mislabelled", "HRT-1212_4x5.mp4")]),
        "HRT-77": ({"video": [], "image": ["1x1"]}, []),
    }

    write_tree(tmp_path / "by-folder", {
        "video/HRT-5/9x16/cut.mp4": media("9x16.mp4"),
        "video/HRT-5/4x5/cut.mp4": media("1x1.mp4"),  # its folder names it 4x5: mislabelled
        "video/HRT-5/1x1/still.png": GARBAGE,  # not a video's extension
        "image/HRT-5/1x1/still.png": media("1x1.png"),
        "image/HRT-5/9x16/cut.mp4": GARBAGE,  # not an image's extension
    })
    _, report, _ = await walk(Watched(tmp_path / "by-folder", "{kind}/{code}/{aspect}/*"))
    [creative] = report.creatives
    assert creative.aspects == {"video": ["9x16"], "image": ["1x1"]}
    assert [(p.problem, p.objects[0], p.named, p.measured) for p in creative.problems] == [
        ("mislabelled", "video/HRT-5/4x5/cut.mp4", "4x5", "1x1")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeWalk:
    def __init__(self) -> None:
        self.catalog = type("C", (), {"name": "masters"})()
        self.folders, self.files, self.measured = 3, 10, 0


def test_progress_redraws_one_line_on_a_terminal_and_prints_now_and_then_elsewhere() -> None:
    walk_state = FakeWalk()
    terminal = Terminal()
    progress = Progress(terminal)
    for walk_state.measured in range(1, 4):
        progress.show(walk_state)  # type: ignore[arg-type]
    progress.done()
    assert terminal.getvalue() == "".join(
        f"\raudit masters: 3 folder(s) listed, {n}/10 file(s) measured\x1b[K" for n in range(1, 4)) + "\n"

    now = [0.0]
    log = io.StringIO()
    progress = Progress(log, clock=lambda: now[0])
    for walk_state.measured in range(1, 11):
        now[0] = walk_state.measured * 1.0
        progress.show(walk_state)  # type: ignore[arg-type]
    progress.done()
    assert [line.split()[-3] for line in log.getvalue().splitlines()] == ["1/10", "6/10", "10/10"]

