"""Fleet mode: receivers and workers as separate real processes on one PostgreSQL database.

Every process here is a real ``fulfiller serve --no-worker`` or ``fulfiller worker``;
the platform (pre-signed upload URLs and wait-token callbacks) is the test double of
``support.platform``, counting PUTs per storage key and callbacks per token. Waits
poll a condition against a deadline; nothing sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from fulfiller.jobs import FINAL
from fulfiller.ops.testevent import signed_headers
from support.platform import PlatformDouble, run_platform
from support.postgres import PgCluster, pg_cluster, pg_private_cluster
from support.servers import ServeProcess, fulfiller_command, wait_until

__all__ = ["pg_cluster", "pg_private_cluster"]

MEDIA = Path(__file__).parent / "media"
SECRET = "whsec_fleet-tests-secret"
PROJECT = "019d928c-02e1-7000-8000-00000000f1ee"
PATH = "/webhooks/outpost"
DB_PASSWORD = "fleet-Pa55word"  # trust auth ignores it; no process may log it


# -- plumbing ----------------------------------------------------------------------------


def write_config(workdir: Path, state: str, *, lease_s: float = 30.0, concurrency: int = 8) -> Path:
    masters = workdir / "masters"
    masters.mkdir(parents=True, exist_ok=True)
    shutil.copy(MEDIA / "9x16.mp4", masters / "9x16.mp4")
    config = {
        "state": state,
        "receiver": {"path": PATH, "secrets": [SECRET]},
        "worker": {
            "concurrency": concurrency, "lease_s": lease_s, "poll_interval_s": 0.5,
            "allow_insecure_http": True, "allowed_upload_hosts": ["127.0.0.1"],
            "allowed_callback_hosts": ["127.0.0.1"], "retry_base_s": 0.2, "retry_max_s": 2.0,
            "shutdown_grace_s": 5.0, "http_timeout_s": 30.0,
        },
        "catalogs": {"local": {"type": "local", "root": str(masters), "layout": "{aspect}"}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    path = workdir / "fulfiller.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class WorkerProcess:
    """``fulfiller worker`` as a real subprocess; its log (JSON lines) goes to a file."""

    def __init__(self, config_path: Path, log_path: Path):
        self.config_path = config_path
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*fulfiller_command(), "worker", "--config", str(self.config_path), "--log-format", "json"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        wait_until(lambda: "worker started" in self.log() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   30, "the worker to start", self.log)
        assert self.proc.poll() is None, self.log()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def finished(self, status: str = "completed") -> int:
        """Jobs this process reports it finished as ``status``."""
        n = 0
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == f"job {status}":
                n += 1
        return n


@contextmanager
def fleet(tmp_path: Path, state: str, *, receivers: int = 2, workers: int = 2,
          lease_s: float = 30.0) -> Iterator[tuple[list[ServeProcess], list[WorkerProcess]]]:
    config = write_config(tmp_path, state, lease_s=lease_s)
    serves = [ServeProcess(config, tmp_path / f"receiver-{i}.log", no_worker=True,
                           extra_args=["--log-format", "json"]) for i in range(receivers)]
    pool = [WorkerProcess(config, tmp_path / f"worker-{i}.log") for i in range(workers)]
    try:
        for serve in serves:
            serve.start()
            wait_until(lambda s=serve: _status(f"{s.base_url}/readyz") == 200, 30, "a receiver to be ready", serve.log)
        for worker in pool:
            worker.start()
        yield serves, pool
    finally:
        for worker in pool:
            worker.stop()
        for serve in serves:
            serve.stop()
    logs = "\n".join(p.log() for p in [*serves, *pool])  # type: ignore[attr-defined]
    assert DB_PASSWORD not in logs, "a process logged the database password"


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


def logs_of(*procs: Any) -> str:
    return "\n".join(f"--- {getattr(p, 'log_path', '?')}\n" + "\n".join(p.log().splitlines()[-40:]) for p in procs)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def storage_key(n: int | str) -> str:
    return f"fb-external/{PROJECT}/FLT-{n}/v1/en/9x16.video"


def token(n: int | str) -> str:
    return f"waitpoint_fleet{n}"


def event_body(platform: PlatformDouble, n: int | str) -> bytes:
    key = storage_key(n)
    return json.dumps({
        "projectId": PROJECT,
        "projectSlug": "fleet",
        "creative": {"code": f"FLT-{n}", "variation": 1, "locale": "en", "aspectRatio": "9x16", "kind": "video"},
        "fulfillment": {
            "uploadUrl": platform.presign(key),
            "storageKey": key,
            "expiresAt": iso(time.time() + 3600),
            "completeCallbackUrl": platform.callback_url(token(n)),
        },
    }).encode()


def headers_for(body: bytes, event_id: str) -> dict[str, str]:
    return signed_headers(body, [SECRET], topic="video.source_requested", event_id=event_id)


def db_rows(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def all_final(url: str, expected: int) -> bool:
    rows = db_rows(url, "SELECT status FROM jobs")
    return len(rows) == expected and all(status in FINAL for (status,) in rows)


@pytest.fixture
def database(pg_cluster: PgCluster) -> Iterator[str]:
    url = pg_cluster.create_database("fulfiller_fleet")
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


# -- 1. many events, two receivers, two workers: no double work ------------------------------


async def _deliver_to_all(receivers: list[str], bodies: dict[str, bytes],
                          concurrency: int = 32) -> dict[str, list[int]]:
    """Each event POSTed to every receiver at once, each POST retried until 2xx (as a retrying sender)."""
    final: dict[str, list[int]] = {eid: [] for eid in bodies}
    limit = asyncio.Semaphore(concurrency)

    async def post(client: httpx.AsyncClient, base: str, eid: str) -> int:
        deadline = time.monotonic() + 60
        while True:
            try:
                body = bodies[eid]
                response = await client.post(f"{base}{PATH}", content=body, headers=headers_for(body, eid))
                if response.status_code in (200, 202):
                    return response.status_code
                assert response.status_code == 503, response.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{eid} never acknowledged by {base}"
            await asyncio.sleep(0.05)  # a sender's retry pacing

    async def one(client: httpx.AsyncClient, eid: str) -> None:
        async with limit:
            final[eid] = list(await asyncio.gather(*(post(client, base, eid) for base in receivers)))

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=2 * concurrency)) as client:
        await asyncio.gather(*(one(client, eid) for eid in bodies))
    return final


def test_a_fleet_does_each_job_exactly_once(tmp_path: Path, database: str) -> None:
    n_events = 500
    with run_platform(tmp_path / "platform") as platform, fleet(tmp_path, database) as (serves, workers):
        bodies = {f"evt-fleet-{i}": event_body(platform, i) for i in range(n_events)}
        started = time.monotonic()
        answers = asyncio.run(_deliver_to_all([s.base_url for s in serves], bodies))
        intake_s = time.monotonic() - started

        # Each event was stored by exactly one receiver; the other saw a duplicate.
        assert {eid: sorted(codes) for eid, codes in answers.items()} == {eid: [200, 202] for eid in bodies}
        accepted_by = Counter(codes.index(202) for codes in answers.values())
        assert set(accepted_by) == {0, 1}, f"one receiver stored everything: {accepted_by}"

        wait_until(lambda: all_final(database, n_events), 240, "every job to finish",
                   lambda: f"{db_rows(database, 'SELECT status, count(*) FROM jobs GROUP BY status')}\n"
                           f"{logs_of(*serves, *workers)}")
        total_s = time.monotonic() - started

        rows = db_rows(database, "SELECT event_id, status, runs, storage_key FROM jobs")
        assert len(rows) == n_events
        assert {r[0] for r in rows} == set(bodies)
        assert Counter(r[1] for r in rows) == {"completed": n_events}
        assert {r[2] for r in rows} == {1}, "a job was claimed more than once"

        uploads = platform.uploads()
        assert Counter(u.outcome for u in uploads) == {"stored": n_events}
        per_key = Counter(u.key for u in uploads)
        assert per_key == {storage_key(i): 1 for i in range(n_events)}
        callbacks = platform.callbacks()
        assert Counter(c.token for c in callbacks) == {token(i): 1 for i in range(n_events)}
        assert all(c.body["storageKey"] == storage_key(c.token.removeprefix("waitpoint_fleet")) for c in callbacks)

        # Their "job completed" lines reach the log files in blocks, up to 0.1 s after the jobs are done.
        wait_until(lambda: sum(w.finished() for w in workers) == n_events, 10, "the workers' log lines",
                   lambda: str([w.finished() for w in workers]))
        done_by = [w.finished() for w in workers]
        assert all(done_by), f"work was not shared: {done_by}"
        print(f"\nfleet: {n_events} events x2 receivers in {intake_s:.1f}s; all jobs done in {total_s:.1f}s; "
              f"stored by receiver {dict(accepted_by)}; completed by worker {done_by}")


# -- 2. a worker killed mid-job: another finishes it after the lease lapses ----------------------


def test_a_killed_workers_job_is_finished_by_another(tmp_path: Path, database: str) -> None:
    slow = "slow"
    with run_platform(tmp_path / "platform") as platform, fleet(tmp_path, database, lease_s=2.0) as (serves, workers):
        platform.hang_uploads(1, key=storage_key(slow))  # the first PUT for this key is never answered
        ids = [slow, *range(4)]
        with httpx.Client(timeout=10) as client:
            for n in ids:
                body = event_body(platform, n)
                response = client.post(f"{serves[0].base_url}{PATH}", content=body,
                                       headers=headers_for(body, f"evt-kill-{n}"))
                assert response.status_code == 202, response.text

        # The job is in flight: its upload reached the platform and hangs there.
        platform.wait_for(lambda p: any(u.outcome == "hung" for u in p.uploads(storage_key(slow))), 30,
                          "the slow upload to start")
        ((owner, status),) = db_rows(database, "SELECT lease_owner, status FROM jobs WHERE event_id = %s",
                                     ("evt-kill-slow",))
        assert status == "running"
        holder_pid = int(owner.split(":")[1])
        holder = next(w for w in workers if w.pid == holder_pid)
        survivor = next(w for w in workers if w is not holder)
        killed_at = time.time()
        holder.kill()

        platform.wait_for_callbacks(1, token=token(slow), timeout=60)
        wait_until(lambda: all_final(database, len(ids)), 60, "every job to finish", lambda: logs_of(survivor))

        ((status, runs),) = db_rows(database, "SELECT status, runs FROM jobs WHERE event_id = %s",
                                    ("evt-kill-slow",))
        assert (status, runs) == ("completed", 2)
        puts = platform.uploads(storage_key(slow))
        assert [u.outcome for u in puts] == ["hung", "stored"]
        assert puts[1].started_at > killed_at + 1.0  # taken again only once the 2 s lease had lapsed
        callbacks = platform.callbacks(token(slow))
        assert len(callbacks) == 1 and callbacks[0].status == 202
        assert callbacks[0].body["storageKey"] == storage_key(slow)
        assert survivor.proc.poll() is None  # type: ignore[union-attr]


# -- 3. PostgreSQL restarts while events arrive ------------------------------------------------


class SteadySender:
    """Threads that keep sending new events, each retried (alternating receivers) until 2xx."""

    def __init__(self, receivers: list[str], platform: PlatformDouble, threads: int = 4):
        self.receivers = receivers
        self.platform = platform
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # event id -> the 2xx that ended its delivery
        self.answers: list[tuple[int, int | None]] = []  # (receiver index, status or None for no answer)
        self.stopping = threading.Event()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> SteadySender:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(90)

    def count(self, status: int | None = None, receiver: int | None = None) -> int:
        with self.lock:
            if status is None:
                return len(self.acked)
            return sum(1 for r, s in self.answers if s == status and receiver in (None, r))

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=15) as client:
            n = 0
            while not self.stopping.is_set():
                eid = f"evt-restart-{worker}-{n}"
                body = event_body(self.platform, f"r{worker}-{n}")
                n += 1
                attempt = 0
                deadline = time.monotonic() + 90
                while True:
                    target = (worker + attempt) % len(self.receivers)
                    try:
                        status: int | None = client.post(f"{self.receivers[target]}{PATH}", content=body,
                                                         headers=headers_for(body, eid)).status_code
                    except httpx.TransportError:
                        status = None
                    with self.lock:
                        self.answers.append((target, status))
                        if status in (200, 202):
                            self.acked[eid] = status
                    if status in (200, 202):
                        break
                    if status not in (None, 503) or time.monotonic() > deadline:
                        self.failures.append(f"{eid}: {status}")
                        return
                    attempt += 1
                    time.sleep(0.02)  # a sender's retry pacing


def test_a_postgres_restart_loses_no_acknowledged_event(tmp_path: Path, pg_private_cluster: PgCluster) -> None:
    cluster = pg_private_cluster
    plain = cluster.create_database("fulfiller_restart")
    state = cluster.url(plain.rsplit("/", 1)[1], password=DB_PASSWORD)
    try:
        with ExitStack() as stack:
            platform = stack.enter_context(run_platform(tmp_path / "platform"))
            serves, _ = stack.enter_context(fleet(tmp_path, state, workers=0))
            bases = [s.base_url for s in serves]
            sender = stack.enter_context(SteadySender(bases, platform))

            wait_until(lambda: sender.count() >= 40, 30, "events to flow", lambda: logs_of(*serves))
            cluster.stop("immediate")  # a crash: whatever was not committed is gone
            try:
                wait_until(lambda: all(sender.count(503, r) >= 1 for r in range(len(bases))), 30,
                           "both receivers to answer 503", lambda: logs_of(*serves))
                wait_until(lambda: all(_status(f"{b}/readyz") == 503 for b in bases), 30, "/readyz to say 503")
                acked_while_down = sender.count()
            finally:
                cluster.start()
            wait_until(lambda: all(_status(f"{b}/readyz") == 200 for b in bases), 30, "/readyz to say 200 again",
                       lambda: logs_of(*serves))
            wait_until(lambda: sender.count() >= acked_while_down + 40, 60, "events to flow again",
                       lambda: logs_of(*serves))
            stack.pop_all().close()  # stop the sender (it finishes its events), then the receivers

        assert sender.failures == []
        stored = {eid for (eid,) in db_rows(plain, "SELECT event_id FROM events")}
        accepted = {eid for eid, status in sender.acked.items() if status == 202}
        assert accepted, "nothing was accepted"
        assert accepted - stored == set(), "an event answered 202 is missing"
        assert set(sender.acked) <= stored
        jobs = db_rows(plain, "SELECT count(*), count(DISTINCT event_id) FROM jobs")[0]
        assert jobs == (len(stored), len(stored))
        print(f"\nrestart: {len(sender.acked)} events acknowledged; {sender.count(503)} answers 503 while down")
    finally:
        cluster.drop_database(plain)
