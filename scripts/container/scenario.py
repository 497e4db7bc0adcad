"""Runs the fulfiller image against a local platform stand-in and checks the container's promises.

In order: the container (read-only root, tmpfs ``/tmp``, state in a volume) reports healthy through
its own HEALTHCHECK and runs as a non-root user; a signed event is delivered end to end (the upload
stored with the master's bytes, the callback received); SIGTERM while an upload is held open (the
stand-in reads it slowly) stops the container within ``worker.shutdown_grace_s`` with the job back
in the queue (or finished), and a second container on the same volume completes it.

Everything listens on 127.0.0.1 and every container runs on the host network. Each step prints one
line; the timings are ``timing <name> <seconds>`` lines. Exit 0 when every check holds.
Run by ``scripts/container-test.sh`` with the project's venv (it reuses the tests' platform double):

    python scripts/container/scenario.py --image fulfiller:container-test --label fulfiller.container-test=ID
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support.masters import media, sha256  # noqa: E402
from support.platform import PlatformDouble, new_token, run_platform  # noqa: E402
from support.servers import free_port, wait_until  # noqa: E402

SECRET = "whsec_container-test-" + secrets.token_hex(8)
GRACE_S = 3.0
SLOW_MASTER_BYTES = 8 * 1024 * 1024
SLOW_READ_BYTES_PER_S = 128 * 1024  # the held upload would take a minute: SIGTERM comes long before
HEALTHY_TIMEOUT_S = 90.0
DELIVERY_TIMEOUT_S = 60.0
CONFIG = """\
server: {{host: 127.0.0.1, port: {port}}}
receiver:
  secrets: ["${{OUTPOST_SIGNING_SECRET}}"]
worker:
  concurrency: 2
  allow_insecure_http: true
  allowed_upload_hosts: ["127.0.0.1:*"]
  allowed_callback_hosts: ["127.0.0.1:*"]
  poll_interval_s: 0.2
  chunk_bytes: 65536
  shutdown_grace_s: {grace}
catalogs:
  masters: {{type: local, root: /masters}}
routes:
  - catalog: masters
"""


class CheckFailed(Exception):
    """A promise the container did not keep; the message says which."""


class Docker:
    """The docker CLI, for the containers and the volume of one run (all carry ``label``)."""

    def __init__(self, exe: str, label: str, image: str):
        self.exe = exe
        self.label = label
        self.image = image
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise CheckFailed(f"docker {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name).stdout.strip()

    def volume(self, name: str) -> str:
        self("volume", "create", "--label", self.label, name)
        self.volumes.append(name)
        return name

    def run_args(self, volume: str, workdir: Path) -> list[str]:
        """What every fulfiller container here runs with: host network, read-only root, state volume."""
        return [
            "--network", "host", "--read-only", "--tmpfs", "/tmp", "--label", self.label,
            "-v", f"{volume}:/var/lib/fulfiller",
            "-v", f"{workdir / 'config.yaml'}:/etc/fulfiller/config.yaml:ro",
            "-v", f"{workdir / 'masters'}:/masters:ro",
            "-e", "OUTPOST_SIGNING_SECRET",
        ]

    def start(self, name: str, volume: str, workdir: Path) -> None:
        # The image's own HEALTHCHECK command, asked every second rather than every 15 s.
        self("run", "-d", "--name", name, "--health-interval", "1s", *self.run_args(volume, workdir), self.image)
        self.containers.append(name)

    def once(self, volume: str, workdir: Path, *command: str) -> str:
        """``command`` in a throwaway container on the same volume and config; its stdout."""
        return self("run", "--rm", *self.run_args(volume, workdir), self.image, *command).stdout

    def logs(self) -> str:
        parts = []
        for name in self.containers:
            done = self("logs", "--tail", "40", name, check=False)
            parts.append(f"--- docker logs --tail 40 {name}\n{done.stdout}{done.stderr}")
        return "\n".join(parts)

    def remove_all(self) -> None:
        for name in self.containers:
            self("rm", "-f", "-v", name, check=False)
        for name in self.volumes:
            self("volume", "rm", "-f", name, check=False)


class Scenario:
    """One run: the stand-in, the masters, the config and the containers on one state volume."""

    def __init__(self, docker: Docker, platform: PlatformDouble, workdir: Path, run_id: str):
        self.docker = docker
        self.platform = platform
        self.workdir = workdir
        self.run_id = run_id
        self.port = free_port()
        self.small = media("9x16.mp4")
        # A real MP4 head (it sniffs and measures as 9x16 video) padded to a size that takes a while to read.
        self.big = self.small + random.Random(17).randbytes(SLOW_MASTER_BYTES - len(self.small))
        self.timings: dict[str, float] = {}

    def prepare(self) -> str:
        for code, data in (("CT-SMALL", self.small), ("CT-SLOW", self.big)):
            folder = self.workdir / "masters" / code / "v2" / "en"
            folder.mkdir(parents=True)
            (folder / "9x16.mp4").write_bytes(data)
        (self.workdir / "config.yaml").write_text(CONFIG.format(port=self.port, grace=GRACE_S))
        return self.docker.volume(f"fulfiller-ct-{self.run_id}")

    def start_healthy(self, name: str, volume: str) -> None:
        self.docker.start(name, volume, self.workdir)
        started = time.monotonic()

        def healthy() -> bool:
            state = json.loads(self.docker.inspect(name, "{{json .State}}"))
            if not state["Running"]:
                raise CheckFailed(f"{name} exited ({state['ExitCode']}) before it was healthy")
            health = state.get("Health") or {}
            if health.get("Status") == "unhealthy":
                raise CheckFailed(f"{name} is unhealthy: {[probe['Output'].strip() for probe in health['Log']]}")
            return health.get("Status") == "healthy"

        wait_until(healthy, HEALTHY_TIMEOUT_S, f"{name} to report healthy")
        self.timings[f"start_to_healthy_{name.rsplit('-', 1)[-1]}"] = time.monotonic() - started
        print(f"ok: {name} healthy through the image's HEALTHCHECK")

    def check_image(self) -> None:
        """The image declares what the README promises: a non-root user, the state volume, a HEALTHCHECK."""
        config = json.loads(self.docker("image", "inspect", "--format", "{{json .Config}}", self.docker.image).stdout)
        if config.get("User") in (None, "", "0", "root"):
            raise CheckFailed(f"the image runs as {config.get('User')!r}, not a non-root user")
        if "/var/lib/fulfiller" not in (config.get("Volumes") or {}):
            raise CheckFailed(f"/var/lib/fulfiller is not a declared volume: {config.get('Volumes')}")
        if not (config.get("Healthcheck") or {}).get("Test"):
            raise CheckFailed("the image has no HEALTHCHECK")
        print(f"ok: the image runs as {config['User']}, declares the /var/lib/fulfiller volume and a HEALTHCHECK")

    def check_non_root_and_read_only(self, name: str) -> None:
        # `docker top` lists the container's processes as the engine's host sees them (pid first, as it needs).
        rows = self.docker("top", name, "-o", "pid,uid,args").stdout.splitlines()[1:]
        if not rows or any(row.split()[1] == "0" for row in rows):
            raise CheckFailed(f"{name} runs a process as root: {rows}")
        write = self.docker("exec", name, "touch", "/opt/fulfiller/written", check=False)
        if write.returncode == 0 or "Read-only file system" not in write.stderr:
            raise CheckFailed(f"{name}'s root file system is writable ({write.stderr.strip()!r})")
        print(f"ok: {name} runs as uid {rows[0].split()[1]} on a read-only root file system")

    def send(self, code: str) -> tuple[str, str]:
        """Post a signed request for ``code``'s 9x16 master; its storage key and wait token."""
        key = f"fb-external/container-test/{code}/v2/en/9x16.video"
        token = new_token()
        fulfiller = Path(sys.executable).parent / "fulfiller"
        sent = subprocess.run(
            [str(fulfiller), "send-test-event", "--url", f"http://127.0.0.1:{self.port}/webhooks/outpost",
             "--secret", SECRET, "--code", code, "--variation", "2", "--locale", "en", "--aspect", "9x16",
             "--upload-url", self.platform.presign(key), "--callback-url", self.platform.callback_url(token)],
            check=False, timeout=60, capture_output=True, text=True)
        if sent.returncode != 0:
            raise CheckFailed(f"send-test-event for {code} failed: {sent.stdout.strip()} {sent.stderr.strip()}")
        return key, token

    def check_delivered(self, key: str, token: str, data: bytes) -> None:
        """Wait for ``token``'s callback; check it and the stored upload against ``data``."""
        wait_until(lambda: bool(self.platform.callbacks(token)), DELIVERY_TIMEOUT_S, f"the callback to {token}")
        callbacks = self.platform.callbacks(token)
        if len(callbacks) != 1:
            raise CheckFailed(f"{len(callbacks)} callbacks to {token}, not one")
        callback = callbacks[0]
        stored = self.platform.stored(key)
        if stored is None or f"sha256:{stored.sha256}" != sha256(data) or stored.size != len(data):
            raise CheckFailed(f"the upload to {key} is not the master's bytes: {stored}")
        if not 200 <= callback.status < 300 or callback.body.get("contentHash") != sha256(data):
            raise CheckFailed(f"unexpected callback {callback.status} {callback.body}")

    def job_status(self, volume: str, code: str) -> str:
        """``code``'s job status as ``fulfiller jobs`` reads it from the state volume."""
        listed = json.loads(self.docker.once(volume, self.workdir, "fulfiller", "jobs", "--json", "--code", code))
        statuses = [job["status"] for job in listed["jobs"]]
        if len(statuses) != 1:
            raise CheckFailed(f"{len(statuses)} jobs for {code}, not one: {statuses}")
        return statuses[0]

    def run(self) -> None:
        self.check_image()
        volume = self.prepare()
        first, second = f"fulfiller-ct-{self.run_id}-first", f"fulfiller-ct-{self.run_id}-second"
        self.start_healthy(first, volume)
        self.check_non_root_and_read_only(first)

        start = time.monotonic()
        key, token = self.send("CT-SMALL")
        self.check_delivered(key, token, self.small)
        self.timings["delivery"] = time.monotonic() - start
        print("ok: a signed event delivered end to end (upload stored with the master's bytes, callback received)")

        self.platform.slow_uploads(SLOW_READ_BYTES_PER_S)
        slow_key, slow_token = self.send("CT-SLOW")
        self.platform.wait_for_bytes(slow_key, 256 * 1024, timeout=DELIVERY_TIMEOUT_S)
        start = time.monotonic()
        self.docker("stop", "-t", str(int(GRACE_S) + 20), first, timeout=GRACE_S + 60)
        self.timings["stop"] = stopped = time.monotonic() - start
        exit_code = self.docker.inspect(first, "{{.State.ExitCode}}")
        # uvicorn re-raises SIGTERM once shut down; as PID 1 that is ignored and it exits 0.
        if exit_code not in ("0", "143"):
            raise CheckFailed(f"{first} exited {exit_code} on SIGTERM (137: killed after the stop timeout)")
        if stopped > GRACE_S + 2:
            raise CheckFailed(f"{first} took {stopped:.1f}s to stop; worker.shutdown_grace_s is {GRACE_S}s")
        # The stand-in drains what the socket still holds at full speed, and so sees the upload end.
        self.platform.slow_uploads(None)
        self.platform.wait_for_uploads(1, key=slow_key, timeout=30)
        status = self.job_status(volume, "CT-SLOW")
        if status not in ("queued", "completed"):
            raise CheckFailed(f"after SIGTERM the held job is {status!r}, not queued (or completed)")
        print(f"ok: SIGTERM during a held upload: stopped in {stopped:.1f}s "
              f"(grace {GRACE_S:.0f}s, exit {exit_code}), job {status}")

        self.start_healthy(second, volume)
        self.check_delivered(slow_key, slow_token, self.big)
        if self.job_status(volume, "CT-SLOW") != "completed":
            raise CheckFailed("the second container delivered the master but the job is not completed")
        print("ok: a second container on the same state volume completed the re-queued job")
        self.docker("stop", "-t", str(int(GRACE_S) + 20), second, timeout=GRACE_S + 60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--label", required=True, help="KEY=VALUE put on every container and volume")
    parser.add_argument("--docker", default="docker", help="the docker CLI to use")
    args = parser.parse_args()
    os.environ["OUTPOST_SIGNING_SECRET"] = SECRET
    run_id = secrets.token_hex(4)
    docker = Docker(args.docker, args.label, args.image)
    with tempfile.TemporaryDirectory(prefix="fulfiller-ct-") as tmp, \
            run_platform(Path(tmp) / "platform") as platform:
        scenario = Scenario(docker, platform, Path(tmp), run_id)
        try:
            scenario.run()
        except (CheckFailed, AssertionError, subprocess.SubprocessError) as exc:
            print(f"FAILED: {exc}\n{docker.logs()}", file=sys.stderr)
            return 1
        finally:
            docker.remove_all()
    for name, seconds in scenario.timings.items():
        print(f"timing {name} {seconds:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
