"""`fulfiller jobs`, `rerun` and `skip` against a real store file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fulfiller.intake.admission import plan
from fulfiller.jobs import Job
from fulfiller.ops.testevent import sample_event
from fulfiller.store.base import REFUSALS, Requeue
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
        await _leave(store, ids["live"], "failed", {"error": "callback answered 400"})
        await store.close()
        return ids

    return cfg, asyncio.run(fill())


async def _leave(store: SQLiteStore, job_id: str, status: str, fields: dict[str, str]) -> None:
    """Have a worker take ``job_id`` and end it ``status`` (others it takes first go back to wait an hour)."""
    claimed = await store.claim("w", 30)
    while claimed is not None and claimed.id != job_id:
        await store.release(claimed.id, "w", retry_in=3600)
        claimed = await store.claim("w", 30)
    assert claimed is not None
    await store.finish(claimed.id, "w", status, fields)


def add_job(cfg: Path, code: str, status: str) -> str:
    """One more job, for ``code``, as a worker left it ``status``; its id."""
    async def add() -> str:
        store = SQLiteStore(f"sqlite:///{cfg.parent / 'f.db'}")
        await store.open()
        try:
            body = _event(code, 3600)
            await store.ingest_event(plan(f"evt-{code}", "video.source_requested", json.dumps(body), body, time.time()))
            [job] = await store.list_jobs(code=code)
            await _leave(store, job.id, status, {})
            return job.id
        finally:
            await store.close()

    return asyncio.run(add())


def stored_job(cfg: Path, job_id: str) -> Job:
    async def get() -> Job:
        store = SQLiteStore(f"sqlite:///{cfg.parent / 'f.db'}")
        await store.open()
        try:
            job = await store.get_job(job_id)
        finally:
            await store.close()
        assert job is not None
        return job

    return asyncio.run(get())


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fulfiller.cli", *args], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


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


def test_rerun_of_a_completed_job_asks_for_force(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, _ = setup
    done = add_job(cfg, "DONE-1", "completed")

    refused = cli("rerun", "--config", str(cfg), done)
    assert refused.returncode == 2
    assert f"{done}: refused: the job is completed" in refused.stdout and "--force" in refused.stdout
    assert stored_job(cfg, done).status == "completed"

    forced = cli("rerun", "--config", str(cfg), done, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert forced.stdout.strip() == f"{done}: re-queued"
    assert stored_job(cfg, done).status == "queued"


def test_skip_queues_the_negative_ack(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, ids = setup
    proc = cli("skip", "--config", str(cfg), ids["live"], "--reason", "  master withdrawn by legal  ")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{ids['live']}: skip requested")
    job = stored_job(cfg, ids["live"])
    assert (job.status, job.skip_requested) == ("queued", "master withdrawn by legal")


@pytest.mark.parametrize(("which", "code", "says"), [
    ("done", 2, REFUSALS[Requeue.ALREADY_CLOSED]),
    ("past", 2, REFUSALS[Requeue.PAST_DEADLINE]),
    ("bad", 2, REFUSALS[Requeue.NOT_RERUNNABLE]),
    ("nope", 1, "no such job"),
])
def test_skip_refusals(setup: tuple[Path, dict[str, str]], which: str, code: int, says: str) -> None:
    cfg, ids = setup
    if which == "done":
        ids["done"] = add_job(cfg, "DONE-1", "completed")
    proc = cli("skip", "--config", str(cfg), ids.get(which, "job_nope"), "--reason", "withdrawn")
    assert proc.returncode == code
    assert says in proc.stdout


def test_skip_needs_a_reason(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, ids = setup
    assert cli("skip", "--config", str(cfg), ids["live"]).returncode == 2  # no --reason at all
    blank = cli("skip", "--config", str(cfg), ids["live"], "--reason", "  ")
    assert blank.returncode == 2
    assert "--reason" in blank.stdout
    assert stored_job(cfg, ids["live"]).status == "failed"


def test_commands_that_only_read_need_no_signing_secret(setup: tuple[Path, dict[str, str]]) -> None:
    cfg, ids = setup
    text = cfg.read_text().replace('secrets: ["s"]', 'secrets: ["${FULFILLER_TEST_UNSET_SECRET}"]')
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "FULFILLER_TEST_UNSET_SECRET"}
    listed = cli("jobs", "--config", str(cfg), "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert ids["live"] in {j["id"] for j in json.loads(listed.stdout)["jobs"]}
    resolved = cli("resolve", "--config", str(cfg), "--code", "NONE-1", "--variation", "1", "--locale", "en",
                   "--aspect", "9x16", env=env)
    assert resolved.returncode == 3, resolved.stderr  # would skip: nothing in the catalog
    assert resolved.stdout.splitlines()[-1] == "would skip: no_match:aspect=9x16"
    cfg.write_text(text.replace('"${FULFILLER_TEST_UNSET_SECRET}"', ""))  # secrets: []
    assert cli("jobs", "--config", str(cfg), env=env).returncode == 0


def test_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("receiver: {secrets: []}\ncatalogs: {}\nroutes: []\nstray: 1\n")
    proc = cli("jobs", "--config", str(cfg))
    assert proc.returncode == 2
    for key in ("catalogs", "routes", "stray"):
        assert f"  {key}:" in proc.stderr
    # serve needs a secret to verify deliveries with: it names that key too, and starts nothing.
    served = cli("serve", "--config", str(cfg))
    assert served.returncode == 2
    for key in ("receiver.secrets", "catalogs", "routes", "stray"):
        assert f"  {key}:" in served.stderr
    assert "Traceback" not in served.stderr


def test_a_state_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    (tmp_path / "state.db").mkdir()
    cfg.write_text(f"""
state: sqlite:///{tmp_path / "state.db"}
catalogs: {{local: {{type: local, root: "{tmp_path}"}}}}
routes: [{{codes: ["*"], catalog: local}}]
""")
    for command in (["jobs"], ["rerun", "job_x"], ["skip", "job_x", "--reason", "r"]):
        proc = cli(*command, "--config", str(cfg))
        assert proc.returncode == 2, command
        assert f"  state: {tmp_path / 'state.db'} is a directory" in proc.stderr
        assert "Traceback" not in proc.stderr
