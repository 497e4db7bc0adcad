"""PostgreSQL for tests: the machine's server when one answers, else a throwaway cluster.

``pg_cluster`` (session) is where the store suite and the fleet tests put their
databases: ``FULFILLER_TEST_POSTGRES`` (an admin URL, or ``throwaway`` to insist on
a cluster of our own) when set, else ``postgresql://postgres@127.0.0.1:5432`` when
it answers (trust auth), else a cluster this
module starts itself with ``initdb`` and ``pg_ctl`` from the PostgreSQL
binaries (``/usr/lib/postgresql/*/bin`` or ``PATH``) in a temporary folder, on a
free port, as a non-root user when the tests run as root. When none of those
works the fixture fails: fleet-mode tests are never silently skipped.

``pg_private_cluster`` (session) is always a throwaway cluster, for tests that
stop and restart the server: the machine's shared one is never touched.

Waits are condition polls with deadlines (``pg_ctl -w``, connection retries),
never fixed sleeps.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

ENV_ADMIN_URL = "FULFILLER_TEST_POSTGRES"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60


def reachable(url: str, timeout_s: int = 3) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=timeout_s, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (the folder holding initdb and pg_ctl)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.parent.name.split(".")],
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl", path=str(Path(on_path).parent)):
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unprivileged_user() -> str | None:
    """Who runs the server when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user exists to run a test PostgreSQL")


class PgCluster:
    """A PostgreSQL server reachable over TCP on 127.0.0.1; ``owned`` when this module started it."""

    def __init__(self, host: str, port: int, user: str, *, admin_db: str = "postgres", password: str | None = None,
                 bindir: Path | None = None, base: Path | None = None, run_as: str | None = None):
        self.host = host
        self.port = port
        self.user = user
        self.admin_db = admin_db
        self.password = password
        self.bindir = bindir
        self.base = base
        self.run_as = run_as

    @property
    def owned(self) -> bool:
        return self.base is not None

    @property
    def datadir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    def url(self, dbname: str, *, password: str | None = None) -> str:
        secret = password if password is not None else self.password
        auth = f"{self.user}:{secret}" if secret else self.user
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def admin_url(self) -> str:
        return self.url(self.admin_db)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url(), autocommit=True, connect_timeout=10)

    def create_database(self, prefix: str = "fulfiller_test") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        try:
            with self.admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except psycopg.Error:
            pass  # the server may be gone at teardown; its data folder goes with it

    # -- a cluster we own -----------------------------------------------------------

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=START_TIMEOUT_S + 30)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        assert self.base is not None
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='{self.base}'"
            " -c max_connections=300 -c fsync=off -c full_page_writes=off"
        )
        result = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.base / "server.log"),
                           "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed ({result.returncode}): {result.stderr}\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash: no checkpoint, recovery on the next start)."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", str(START_TIMEOUT_S), "stop",
                  check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def server_log(self) -> str:
        if self.base is None:
            return ""
        try:
            return (self.base / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        if self.base is not None:
            self.stop("immediate")
            shutil.rmtree(self.base, ignore_errors=True)


def start_throwaway_cluster() -> PgCluster:
    """initdb + pg_ctl start in a new temporary folder, on a free port on 127.0.0.1."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL reachable and no initdb/pg_ctl found (install the 'postgresql' package; "
            "scripts/test.sh does) or set " + ENV_ADMIN_URL
        )
    run_as = _unprivileged_user()
    base = Path(tempfile.mkdtemp(prefix="fulfiller-pg-"))
    if run_as:
        info = pwd.getpwnam(run_as)
        os.chown(base, info.pw_uid, info.pw_gid)
    cluster = PgCluster("127.0.0.1", 0, SUPERUSER, bindir=bindir, base=base, run_as=run_as)
    try:
        cluster._run("initdb", "-D", str(cluster.datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                     "--locale=C", "--no-sync")
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken by the time the server binds it
            cluster.port = _free_port()
            try:
                cluster.start()
                break
            except RuntimeError as exc:
                last_error = exc
        else:
            raise RuntimeError(f"could not start a throwaway PostgreSQL: {last_error}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not reachable(cluster.admin_url()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"throwaway PostgreSQL does not answer:\n{cluster.server_log()}")
            time.sleep(0.05)  # a poll interval bounded by the deadline
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def shared_cluster() -> PgCluster | None:
    """The cluster named by FULFILLER_TEST_POSTGRES, or the machine's on 127.0.0.1:5432, if it answers."""
    url = os.environ.get(ENV_ADMIN_URL) or DEFAULT_ADMIN_URL
    if url == "throwaway":
        return None
    if not reachable(url):
        if os.environ.get(ENV_ADMIN_URL):
            raise RuntimeError(f"{ENV_ADMIN_URL} is set but does not answer")
        return None
    info = psycopg.conninfo.conninfo_to_dict(url)
    return PgCluster(
        str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432), str(info.get("user") or SUPERUSER),
        admin_db=str(info.get("dbname") or "postgres"), password=info.get("password"),  # type: ignore[arg-type]
    )


# Conftests and test modules each import these fixtures, and pytest then keeps one
# instance per place it was imported: the cluster itself is shared, counted, and
# destroyed when the last of them lets it go.
_clusters: dict[str, tuple[PgCluster, int]] = {}


@contextmanager
def _shared(kind: str, make: Callable[[], PgCluster]) -> Iterator[PgCluster]:
    cluster, users = _clusters.get(kind) or (make(), 0)
    _clusters[kind] = (cluster, users + 1)
    try:
        yield cluster
    finally:
        cluster, users = _clusters[kind]
        if users > 1:
            _clusters[kind] = (cluster, users - 1)
        else:
            del _clusters[kind]
            if cluster.owned:
                cluster.destroy()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    with _shared("main", lambda: shared_cluster() or start_throwaway_cluster()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_private_cluster() -> Iterator[PgCluster]:
    """A cluster of our own, which tests may stop, crash and restart (and must start again)."""
    with _shared("private", start_throwaway_cluster) as cluster:
        if not reachable(cluster.admin_url(), 1):
            cluster.start()  # a test that stopped it failed before starting it again
        yield cluster


@pytest.fixture(scope="module")
def pg_database(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database for one test module; its URL."""
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


def reset_schema(url: str) -> None:
    """Drop the fulfiller's tables so the next store starts from an empty database (migrations included)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("DROP TABLE IF EXISTS attempts, jobs, events, fulfiller_schema CASCADE")


__all__ = [
    "PgCluster", "pg_cluster", "pg_database", "pg_private_cluster", "reachable", "reset_schema",
    "shared_cluster", "start_throwaway_cluster",
]
