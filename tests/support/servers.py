"""Real servers for tests: an ASGI app under uvicorn in a thread, or ``fulfiller serve`` as a subprocess.

Both bind 127.0.0.1 only and wait for readiness by polling with a deadline
(``server.started`` for the thread, ``GET /healthz`` for the subprocess):
never a fixed sleep.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

START_TIMEOUT_S = 20.0

TEST_SECRET = "whsec_intake-tests-secret-0123456789"
TEST_ADMIN_TOKEN = "admin-token-for-tests-5b1c"


def wait_until(check: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str] = lambda: "") -> None:
    """Poll ``check`` until it holds; fail naming ``what`` (and ``on_fail()``) once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_fail()}")
        time.sleep(0.05)  # a poll interval bounded by the deadline, not a synchronisation sleep


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a subprocess that binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _DropMessages(logging.Filter):
    """Drops the log records whose message contains ``text``."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def serve_in_thread(app: Any, *, lifespan: str = "on", http: str = "auto", name: str = "test-server",
                    timeout_graceful_shutdown: float = 2, quiet: str | None = None,
                    **uvicorn_options: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL.

    The socket is bound before the thread starts, so the URL is right at once;
    the block is entered only after uvicorn says it started (lifespan included).
    ``quiet``: uvicorn's error-log lines that contain it are dropped while serving
    (a double that cuts answers on purpose need not see them reported).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, http=http, lifespan=lifespan, log_config=None, access_log=False,
                            timeout_graceful_shutdown=timeout_graceful_shutdown, **uvicorn_options)
    server = uvicorn.Server(config)
    log_filter = _DropMessages(quiet) if quiet else None
    if log_filter:
        logging.getLogger("uvicorn.error").addFilter(log_filter)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=name)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.01)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        if log_filter:
            logging.getLogger("uvicorn.error").removeFilter(log_filter)


def write_config(directory: Path, state: str, *, secret: str = TEST_SECRET, admin_token: str = TEST_ADMIN_TOKEN,
                 receiver: Mapping[str, Any] | None = None, name: str = "fulfiller.yaml") -> Path:
    """A minimal valid config file (one local catalog, one catch-all route) in ``directory``."""
    masters = directory / "masters"
    masters.mkdir(exist_ok=True)
    config = {
        "state": state,
        "receiver": {"secrets": [secret], **(receiver or {})},
        "admin": {"token": admin_token},
        "worker": {"allow_insecure_http": True, "allowed_upload_hosts": ["127.0.0.1"],
                   "allowed_callback_hosts": ["127.0.0.1"]},
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    path = directory / name
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def fulfiller_command() -> list[str]:
    """The ``fulfiller`` console script of the interpreter running the tests (or ``python -m``)."""
    script = shutil.which("fulfiller", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "fulfiller.cli"]


class ServeProcess:
    """``fulfiller serve`` as a real subprocess on 127.0.0.1; its stderr (the log) goes to a file."""

    def __init__(self, config_path: Path, log_path: Path, *, no_worker: bool = True,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.children: list[int] = []
        self.no_worker = no_worker
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> ServeProcess:
        """Start and wait until ``/healthz`` answers 200 (a few tries if the chosen port was taken)."""
        for _ in range(3):
            self.port = free_port()
            args = [*fulfiller_command(), "serve", "--config", str(self.config_path),
                    "--host", "127.0.0.1", "--port", str(self.port), *self.extra_args]
            if self.no_worker:
                args.append("--no-worker")
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            if self._wait_healthy(timeout_s):
                return self
            if self.proc.poll() is None:
                self.kill()
                raise RuntimeError(f"fulfiller serve did not become healthy:\n{self.log()}")
            if "address already in use" not in self.log().lower():
                raise RuntimeError(f"fulfiller serve exited with {self.proc.returncode}:\n{self.log()}")
        raise RuntimeError(f"fulfiller serve could not bind a port:\n{self.log()}")

    def _wait_healthy(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.get(f"{self.base_url}/healthz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling interval, not synchronisation: the deadline bounds it
        return False

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash or an OOM kill. ``children`` keeps the pids of the
        processes it had started (the SQLite ingest process), which the kill leaves to fend for themselves."""
        if self.proc is not None and self.proc.poll() is None:
            tasks = Path(f"/proc/{self.proc.pid}/task")
            self.children = [int(pid) for task in tasks.iterdir() for pid in (task / "children").read_text().split()]
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM and wait (a graceful stop); SIGKILL if it will not go."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_containing(self, text: str, timeout_s: float = 10.0) -> str:
        """The log, once ``text`` is in it: INFO lines reach the file in blocks, up to 0.1 s after they are logged."""
        wait_until(lambda: text in self.log(), timeout_s, f"{text!r} in the log", lambda: self.log()[-4000:])
        return self.log()

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines skipped)."""
        out = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def admin_jobs(client: httpx.Client, base_url: str, token: str = TEST_ADMIN_TOKEN, *,
               status: str | None = None, page: int = 500) -> list[dict[str, Any]]:
    """Every job the admin API lists, following ``next_offset`` page by page."""
    jobs: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        params: dict[str, Any] = {"limit": page, "offset": offset}
        if status:
            params["status"] = status
        response = client.get(f"{base_url}/admin/jobs", params=params,
                              headers={"Authorization": f"Bearer {token}"})
        response.raise_for_status()
        body = response.json()
        jobs.extend(body["jobs"])
        offset = body.get("next_offset")
    return jobs
