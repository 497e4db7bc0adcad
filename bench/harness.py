"""What the transfer benchmarks (bench/drive.py, bench/transfer.py) share.

* the sink: a minimal upload target and callback recorder, run in its own
  process (``python bench/harness.py --serve-sink``) so that the measurement is
  of the sender, not of a slow receiver;
* small helpers: sizes, free ports, polling, masters, CPU and memory from /proc;
* :class:`Harness`: the sink, a fresh ``fulfiller serve`` process per case, one
  signed event through it timed until its callback arrives, and clean-up;
* :func:`arg_parser` and :func:`run_bench`: the options and the run every
  benchmark has.

The benchmarks import this module as a sibling (their own folder is first on
``sys.path`` when run as ``.venv/bin/python bench/<name>.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MiB = 1 << 20
SECRET = "bench-signing-secret"
ADMIN_TOKEN = "bench-admin-token"
WARMUP = 64 * 1024  # the size of the warm-up master each fresh fulfiller moves first
# An ISO BMFF "ftyp" box: enough for libmagic to call the master video/mp4.
FTYP = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free"


# --- the sink: a fast upload target and callback recorder, in its own process ---------------


class Sink(asyncio.BufferedProtocol):
    """HTTP/1.1 with Content-Length bodies only (S3-style PUTs refuse chunked too), keep-alive.

    PUT: the body is counted and dropped. POST: the body is kept (callbacks are small).
    GET /records: every finished request so far, as JSON.
    """

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.view = memoryview(bytearray(4 * MiB))
        self.head = bytearray()
        self.left = 0
        self.req: dict[str, Any] | None = None
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        while data:
            if self.req is not None:  # in a body
                take = min(self.left, len(data))
                self.req["bytes"] += take
                if self.req["method"] != "PUT":
                    self.body += data[:take]
                self.left -= take
                data = data[take:]
                if self.left == 0:
                    self._finish()
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._reply(431, b"{}", close=True)
                return
            rest = memoryview(bytes(self.head[end + 4 :]))
            self._start(bytes(self.head[:end]))
            self.head = bytearray()
            data = rest
            if self.req is not None and self.left == 0:
                self._finish()

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding"):
            self._reply(411, b'{"error":"chunked bodies refused"}', close=True)
            return
        if headers.get("expect", "").lower() == "100-continue":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.req = {"method": method, "path": target.split("?", 1)[0], "started": time.time(), "bytes": 0,
                    "declared": int(headers.get("content-length", "0")), "content_type": headers.get("content-type")}
        self.body = bytearray()
        self.left = self.req["declared"]

    def _finish(self) -> None:
        req, self.req = self.req, None
        assert req is not None
        if req["method"] == "GET" and req["path"] == "/records":
            self._reply(200, json.dumps(self.records).encode())
            return
        req["finished"] = time.time()
        if req["method"] != "PUT":
            req["body"] = self.body.decode("utf-8", "replace")
        self.records.append(req)
        self._reply(200, b"{}")

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _reply(self, status: int, body: bytes, close: bool = False) -> None:
        head = (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                + ("connection: close\r\n" if close else "") + "\r\n")
        self._write(head.encode() + body)
        if close and self.transport is not None:
            self.transport.close()


def serve_sink(use_uvloop: bool = False) -> None:
    """Run the sink until killed; print its port on the first line of stdout."""
    if use_uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass

    async def main() -> None:
        records: list[dict[str, Any]] = []
        server = await asyncio.get_running_loop().create_server(lambda: Sink(records), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# --- helpers ----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def human(size: int) -> str:
    for unit, n in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n}{unit}"
    return str(size)


def mibps(size: int, seconds: float) -> float:
    return size / seconds / MiB


def sha256_speed(total: int = 256 * MiB) -> float:
    """MiB/s of hashlib's SHA-256 on this core now: the most any transfer that hashes every byte can reach."""
    block = os.urandom(4 * MiB)
    sha = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(total // len(block)):
        sha.update(block)
    return total / (time.perf_counter() - started) / MiB


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return json.loads(resp.read())


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(interval)


def make_master(path: Path, size: int) -> str:
    """Random bytes behind an MP4 ftyp box, written in 1 MiB blocks; returns the SHA-256 hex."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            block = os.urandom(min(MiB, left))
            if left == size:
                block = FTYP + block[len(FTYP) :]
            f.write(block)
            hasher.update(block)
            left -= len(block)
    return hasher.hexdigest()


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system CPU seconds of waited-for child processes (and theirs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


# --- the bench skeleton -------------------------------------------------------------------------


class Harness:
    """The sink, fresh ``fulfiller serve`` processes and their runs; a benchmark adds its source and baselines.

    A subclass sets ``code_prefix`` and ``catalog_name`` and implements :meth:`catalog`, :meth:`run`.
    """

    code_prefix = "SZ"
    catalog_name = "bench"
    sink_uvloop = False

    def __init__(self, args: argparse.Namespace, tmp: Path, env: dict[str, str] | None = None):
        self.args = args
        self.tmp = tmp
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sink = ""
        self.hashes: dict[str, str] = {}
        self.fulfiller: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "fulfiller.log"

    def code(self, size: int) -> str:
        return f"{self.code_prefix}-{human(size)}"

    def catalog(self) -> dict[str, Any]:
        """The catalog the next fulfiller serves from."""
        raise NotImplementedError

    def callback_timeout(self, size: int) -> float:
        return 900

    def run(self) -> list[Any]:
        raise NotImplementedError

    # infrastructure

    def start_sink(self) -> None:
        cmd = [sys.executable, __file__, "--serve-sink", *(["--uvloop"] if self.sink_uvloop else [])]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        self.sink = f"http://127.0.0.1:{int(proc.stdout.readline())}"

    def records(self) -> list[dict[str, Any]]:
        return get_json(f"{self.sink}/records")

    def start_fulfiller(self) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port},
            "state": f"sqlite:///{self.tmp / ('state-' + uuid.uuid4().hex[:8] + '.db')}",
            "receiver": {"secrets": [SECRET]},
            "admin": {"token": ADMIN_TOKEN},
            "worker": {
                "concurrency": 1,
                "allow_insecure_http": True,
                "allowed_upload_hosts": ["127.0.0.1"],
                "allowed_callback_hosts": ["127.0.0.1"],
                "chunk_bytes": self.args.chunk_bytes,
            },
            "catalogs": {self.catalog_name: self.catalog()},
            "routes": [{"codes": ["*"], "catalog": self.catalog_name}],
        }
        path = self.tmp / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fulfiller.cli", "serve", "--config", str(path)],
                                    env=self.env, stdout=log, stderr=log, cwd=self.tmp)
        self.procs.append(proc)
        self.fulfiller = proc
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: self.alive() and urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200,
                   30, "fulfiller serve to answer /healthz", 0.05)
        return proc, base

    def alive(self) -> bool:
        """True while the fulfiller runs; its log's tail as the error when it has died."""
        if self.fulfiller is not None and self.fulfiller.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"fulfiller serve exited with {self.fulfiller.returncode}:\n{tail}")
        return True

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    @contextmanager
    def fresh_fulfiller(self, case: Any, warmup_tag: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
        """A fresh fulfiller for one case, after one small warm-up job; its memory goes into ``case``."""
        proc, base = self.start_fulfiller()
        try:
            self.run_fulfiller(base, WARMUP, f"{warmup_tag}-{uuid.uuid4().hex[:6]}")
            case.hwm_warm = proc_status(proc.pid)["VmHWM"]
            yield proc, base
            status = proc_status(proc.pid)
            case.hwm, case.rss = status["VmHWM"], status["VmRSS"]
        finally:
            self.stop(proc)

    # one transfer through the fulfiller

    def run_fulfiller(self, base: str, size: int, tag: str) -> tuple[float, float, float]:
        """End-to-end seconds (event POST to callback received), the upload step's own seconds, and the
        fulfiller's CPU seconds from the POST to the callback.

        The time is the sink's (callback arrival) less this process's (event sent): one clock, one machine.
        """
        from fulfiller.ops.testevent import sample_event, signed_headers

        assert self.fulfiller is not None
        code = self.code(size)
        upload = f"{self.sink}/upload/{tag}?X-Amz-Signature=bench"
        callback = f"{self.sink}/callback/{tag}"
        body = json.dumps(sample_event(upload, callback, code=code)).encode()
        headers = signed_headers(body, [SECRET], topic="video.source_requested", event_id=f"evt_{tag}")
        cpu_before = process_cpu(self.fulfiller.pid)
        started = time.time()
        req = urllib.request.Request(f"{base}/webhooks/outpost", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202, resp.status
            event = json.loads(resp.read())
        assert event["status"] == "accepted"

        def callback_in() -> dict[str, Any] | None:
            self.alive()
            return next((r for r in self.records() if r["path"] == f"/callback/{tag}"), None)

        # Not the admin API: polling it would spend the fulfiller's CPU during the measurement.
        record = wait_until(callback_in, self.callback_timeout(size), f"the callback of {tag} (see {self.log_path})",
                            0.02)
        elapsed = record["finished"] - started
        cpu = process_cpu(self.fulfiller.pid) - cpu_before
        self.expect_upload(f"/upload/{tag}", size)
        got = json.loads(record["body"])
        if got.get("contentHash") != f"sha256:{self.hashes[code]}":
            raise SystemExit(f"wrong contentHash for {tag}: {got}")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listed = get_json(f"{base}/admin/jobs?limit=1", auth)["jobs"][0]

        def finished() -> dict[str, Any] | None:  # the final status is committed just after the callback
            job = get_json(f"{base}/admin/jobs/{listed['id']}", auth)
            return job if job["status"] not in ("queued", "running") else None

        job = wait_until(finished, 30, f"job {listed['id']} to finish", 0.02)
        if job["status"] != "completed":
            raise SystemExit(f"job {job['id']} ended {job['status']}: {job.get('error')}")
        upload_ms = sum(a["duration_ms"] for a in job["attempts"] if a["step"] == "upload")
        return elapsed, upload_ms / 1000, cpu

    def expect_upload(self, path: str, size: int) -> None:
        got = [r for r in self.records() if r["path"] == path]
        if len(got) != 1 or got[0]["bytes"] != size or got[0]["declared"] != size:
            raise SystemExit(f"sink saw {got} for {path}, expected one PUT of {size} bytes")


# --- options and the run --------------------------------------------------------------------------


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark has: --sizes, --repeat, --chunk-bytes, --keep."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100M,1G", type=lambda s: [parse_size(x) for x in s.split(",")])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per case (median reported)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="worker.chunk_bytes for the fulfiller")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (masters, logs)")
    return parser


def run_bench(parser: argparse.ArgumentParser, args: argparse.Namespace, bench_class: type[Harness],
              prefix: str, report: Callable[[list[Any]], bool]) -> int:
    """Run the benchmark in a temporary folder and report; the exit status: 0 when its goals are met."""
    if not shutil.which("curl"):
        parser.error("curl is needed for the baseline")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    bench = bench_class(args, tmp)
    try:
        ok = report(bench.run())
    finally:
        bench.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["--serve-sink"]:
        sys.exit("usage: harness.py --serve-sink [--uvloop]  (the benchmarks import this module)")
    serve_sink(use_uvloop="--uvloop" in sys.argv[2:])
