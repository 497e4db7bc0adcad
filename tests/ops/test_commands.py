"""`fulfiller jobs` and `fulfiller rerun` against a real store file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fulfiller.intake.admission import plan
from fulfiller.ops.testevent import sample_event
from fulfiller.store.sqlite import SQLiteStore
from support.odd_jobs import ODD_ROWS, job_row


def _event(code: str, expires_in_s: int) -> dict:
    # One wait token per request: a second request with the same one would be a duplicate.
    body = sample_event("https://u.r2.cloudflarestorage.com/k?X-Amz-Signature=sekrit",
                        f"https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_tok{code}/complete", code=code)
    expires = datetime.now(UTC) + timedelta(seconds=expires_in_s)
    body["fulfillment"]["expiresAt"] = expires.isoformat().replace("+00:00", "Z")
    return body


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    db = tmp_path / "f.db"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
state: sqlite:///{db}
receiver: {{secrets: ["s"]}}
catalogs: {{local: {{type: local, root: "{tmp_path}"}}}}
routes: [{{codes: ["*"], catalog: local}}]
""")

    async def fill() -> dict[str, str]:
        store = SQLiteStore(f"sqlite:///{db}")
        await store.open()
        ids = {}
        for name, body in (("live", _event("LIVE-1", 3600)), ("past", _event("PAST-1", -10)),
                           ("bad", {"projectId": "p"})):
            text = json.dumps(body)
            await store.ingest_event(plan(f"evt-{name}", "video.source_requested", text, body, time.time()))
        for job in await store.list_jobs():
            ids[{"LIVE-1": "live", "PAST-1": "past"}.get(job.code or "", "bad")] = job.id
        # Make the live job failed, as a worker would leave it, so a rerun has something to do.
        claimed = await store.claim("w", 30)
        while claimed is not None and claimed.id != ids["live"]:
            await store.release(claimed.id, "w", not_before=time.time() + 3600)
            claimed = await store.claim("w", 30)
        assert claimed is not None
        await store.finish(claimed.id, "w", "failed", {"error": "callback answered 400"})
        await store.close()
        return ids

    return cfg, asyncio.run(fill())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fulfiller.cli", *args], capture_output=True, text=True, timeout=60)


def test_jobs_lists_newest_first_with_status_and_reason(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, ids = setup
    proc = cli("jobs", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "KIND"]
    assert [ln.split()[0] for ln in lines[1:]] == [ids["bad"], ids["past"], ids["live"]]
    assert "callback answered 400" in proc.stdout
    assert "invalid payload" in proc.stdout


def test_jobs_filters_by_status_and_prints_json(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, ids = setup
    proc = cli("jobs", "--config", str(cfg), "--status", "failed", "--json")
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads(proc.stdout)["jobs"]
    assert [j["id"] for j in jobs] == [ids["live"]]
    assert jobs[0]["error"] == "callback answered 400"
    assert "sekrit" not in proc.stdout and "waitpoint_tok" not in proc.stdout


def test_jobs_renders_every_odd_stored_job(setup: tuple[Path, dict[str, str]]) -> None:
    """Jobs stored before intake bounded what it takes, or edited by hand (see support.odd_jobs)."""
    cfg, _ = setup
    names = {}
    with contextlib.closing(sqlite3.connect(cfg.parent / "f.db")) as db, db:
        for name, row in ODD_ROWS.items():
            job_id, sql, values = job_row("evt-live", **row)
            db.execute(sql, values)
            names[job_id] = name
    table = cli("jobs", "--config", str(cfg), "--limit", "100")
    assert table.returncode == 0, table.stderr
    assert all(job_id in table.stdout for job_id in names)
    # A sender's newlines and terminal escapes are shown escaped: one line per job, no forged line, no colour.
    assert len(table.stdout.splitlines()) == 1 + len(names) + 3
    assert "\x1b" not in table.stdout and "\\x1b[31mforged line" in table.stdout
    listed = cli("jobs", "--config", str(cfg), "--limit", "100", "--json")
    assert listed.returncode == 0, listed.stderr
    assert set(names) <= {j["id"] for j in json.loads(listed.stdout)["jobs"]}


def test_jobs_refuses_an_unknown_status(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, _ = setup
    proc = cli("jobs", "--config", str(cfg), "--status", "done")
    assert proc.returncode == 2
    assert "unknown status 'done'" in proc.stdout


def test_rerun_requeues_a_failed_job(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, ids = setup
    proc = cli("rerun", "--config", str(cfg), ids["live"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = json.loads(cli("jobs", "--config", str(cfg), "--status", "queued", "--json").stdout)["jobs"]
    assert ids["live"] in [j["id"] for j in listed]


@pytest.mark.parametrize(("which", "code", "says"), [
    ("past", 2, "deadline (expiresAt) has passed"),
    ("bad", 2, "an invalid payload cannot be rerun"),
    ("nope", 1, "no such job"),
])
def test_rerun_refusals(setup: tuple[Path, dict[str, str]], which: str, code: int, says: str) -> None:
    cfg, ids = setup
    proc = cli("rerun", "--config", str(cfg), ids.get(which, "job_nope"))
    assert proc.returncode == code
    assert says in proc.stdout


def test_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("receiver: {secrets: []}\ncatalogs: {}\nroutes: []\nstray: 1\n")
    proc = cli("jobs", "--config", str(cfg))
    assert proc.returncode == 2
    for key in ("receiver.secrets", "catalogs", "routes", "stray"):
        assert f"  {key}:" in proc.stderr
