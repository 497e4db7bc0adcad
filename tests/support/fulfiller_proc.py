"""``fulfiller serve`` as a real subprocess, driven the way the platform and an operator drive it.

Process handling (free port, readiness on ``/healthz``, SIGTERM/SIGKILL, the
log file) is ``support.servers.ServeProcess``; this adds what the engine's
acceptance tests need on top: a config written from a dict, events sent signed
exactly as Outpost signs them, jobs read back through the admin API, and waits
that poll with a deadline (never a fixed sleep). The process can be killed and
started again on the same state, which is what crash tests need.

    with FulfillerProcess(tmp_path, config) as proc:
        job_id = proc.deliver(event_body)           # signed POST, 202, the job's id
        done = proc.wait_for_job(job_id, timeout=20)
        assert done["status"] == "completed"
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from fulfiller.jobs import FINAL
from fulfiller.ops.testevent import signed_headers
from support.servers import ServeProcess, admin_jobs, free_port

SOURCE_REQUESTED = "video.source_requested"


class FulfillerProcess:
    """One ``fulfiller serve`` process (receiver and workers; restartable) with its config, log and admin client.

    ``config`` is the YAML as a dict; ``receiver.secrets``, ``admin.token`` and
    ``state`` (SQLite in ``workdir``) are filled in when missing. ``env`` adds
    to the inherited environment (AWS variables, for instance).
    """

    def __init__(self, workdir: Path, config: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
                 secret: str = "whsec_test_fulfiller", admin_token: str = "admin-token-for-tests"):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.secret = secret
        self.admin_token = admin_token
        cfg = copy.deepcopy(dict(config))
        cfg.setdefault("receiver", {}).setdefault("secrets", [secret])
        cfg.setdefault("admin", {}).setdefault("token", admin_token)
        cfg.setdefault("state", f"sqlite:///{workdir / 'fulfiller.db'}")
        self.config = cfg
        self.config_path = workdir / "fulfiller.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.serve = ServeProcess(self.config_path, workdir / "fulfiller.log", no_worker=False,
                                  extra_args=["--log-format", "json"], env=env)
        self.starts = 0
        self.http = httpx.Client(timeout=10)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.serve.base_url

    def start(self) -> FulfillerProcess:
        """Start ``fulfiller serve`` on a free port and wait until /healthz answers 200."""
        if self.running:
            raise RuntimeError("already running")
        self.starts += 1
        self.serve.start()
        return self

    @property
    def running(self) -> bool:
        return self.serve.proc is not None and self.serve.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL when it will not go); the exit code."""
        return self.serve.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs; leases stay held until they lapse."""
        self.serve.kill()

    def close(self) -> None:
        self.stop()
        self.http.close()

    def __enter__(self) -> FulfillerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        return self.serve.log()

    def log_containing(self, text: str, timeout_s: float = 10.0) -> str:
        return self.serve.log_containing(text, timeout_s)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- events ------------------------------------------------------------------------

    def send_event(self, data: Mapping[str, Any] | bytes, *, topic: str = SOURCE_REQUESTED,
                   event_id: str | None = None) -> httpx.Response:
        """POST ``data`` to the receiver, signed as Outpost signs it."""
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        event_id = event_id or f"evt_{uuid.uuid4().hex}"
        receiver = self.config.get("receiver", {})
        headers = signed_headers(body, list(receiver.get("secrets", [self.secret])), topic=topic,
                                 event_id=event_id, mode=receiver.get("mode", "outpost"),
                                 prefix=receiver.get("header_prefix"))
        return self.http.post(f"{self.base_url}{receiver.get('path', '/webhooks/outpost')}",
                              content=body, headers=headers)

    def deliver(self, data: Mapping[str, Any], *, event_id: str | None = None) -> str:
        """Send a ``video.source_requested`` event, require 202, and return its job's id."""
        event_id = event_id or f"evt_{uuid.uuid4().hex}"
        response = self.send_event(data, event_id=event_id)
        if response.status_code != 202:
            raise AssertionError(f"receiver answered {response.status_code}: {response.text}")
        return self.job_for_event(event_id)["id"]

    # -- admin API ---------------------------------------------------------------------

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.base_url}{path}", headers=headers, **kwargs)

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every job, newest first."""
        return admin_jobs(self.http, self.base_url, self.admin_token, status=status)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.admin("GET", f"/admin/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def job_for_event(self, event_id: str, timeout: float = 10.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def look() -> bool:
            found[:] = [j for j in self.jobs() if j["event_id"] == event_id]
            return bool(found)

        self._poll(look, timeout, f"a job for event {event_id}")
        return found[0]

    def wait_for_job(self, job_id: str, statuses: Iterable[str] = FINAL, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the admin API until the job's status is one of ``statuses``; the job."""
        wanted = frozenset(statuses)
        seen: dict[str, Any] = {}

        def look() -> bool:
            seen.update(self.job(job_id))
            return seen["status"] in wanted

        try:
            self._poll(look, timeout, f"job {job_id} to reach {sorted(wanted)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast seen: {json.dumps(seen, indent=1)}") from None
        return dict(seen)

    def wait_until(self, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                   what: str = "a condition") -> dict[str, Any]:
        """Poll the job until ``predicate(job)`` holds; the job."""
        seen: dict[str, Any] = {}

        def look() -> bool:
            seen.clear()
            seen.update(self.job(job_id))
            return predicate(seen)

        self._poll(look, timeout, f"job {job_id}: {what}")
        return dict(seen)

    # -- plumbing ----------------------------------------------------------------------

    def _poll(self, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n--- fulfiller log ---\n"
                                     f"{self.log_tail()}")
            proc = self.serve.proc
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"fulfiller serve exited ({proc.returncode}) while waiting for {what}\n"
                                     f"{self.log_tail()}")
            time.sleep(interval)


def fast_worker(upload_hosts: Iterable[str], callback_hosts: Iterable[str], **overrides: Any) -> dict[str, Any]:
    """A ``worker`` config section for tests: plain HTTP to the given hosts only; short leases, polls and backoff."""
    return {
        "concurrency": 4,
        "allow_insecure_http": True,
        "allowed_upload_hosts": list(upload_hosts),
        "allowed_callback_hosts": list(callback_hosts),
        "lease_s": 10,
        "poll_interval_s": 0.2,
        "retry_base_s": 0.02,
        "retry_max_s": 0.2,
        "http_timeout_s": 10,
        "shutdown_grace_s": 2,
        **overrides,
    }


def attempts(job: Mapping[str, Any], step: str) -> list[dict[str, Any]]:
    """The job's attempts at ``step`` (resolve, upload, callback), in order."""
    return [a for a in job.get("attempts", []) if a["step"] == step]


__all__ = ["FulfillerProcess", "attempts", "fast_worker", "free_port"]
