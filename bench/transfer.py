"""Transfer benchmark: a big master through ``fulfiller serve``, against a no-logic baseline.

For each source (local catalog, S3 on moto) and each size, one run is:

* baseline: the same bytes moved with no logic at all: ``curl -T file`` for the
  local catalog, ``curl GET | curl PUT`` (a fixed Content-Length, not chunked)
  from the same moto server for S3;
* fulfiller: a signed ``video.source_requested`` event POSTed to a fresh
  ``fulfiller serve`` process, timed until its completion callback arrives
  (end to end: receive, store, claim, resolve, sniff, stream + hash, callback).

The upload URL and the callback are served by a minimal sink in its own process
(raw asyncio, discards the bytes and counts them), so the measurement is of the
sender, not of a slow receiver. Peak RSS is the fulfiller process's VmHWM, read
from /proc after its jobs. Each (source, size) gets a fresh fulfiller process
(after one small warm-up job) so its VmHWM belongs to that size alone.

    .venv/bin/python bench/transfer.py --sizes 100M,1G --sources local,s3

Needs Linux (/proc), curl, and the project's test extras (moto[server]) for S3.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
LOAD_AT_START = os.getloadavg()
SECRET = "bench-signing-secret"
ADMIN_TOKEN = "bench-admin-token"
BUCKET = "bench-masters"
# An ISO BMFF "ftyp" box: enough for libmagic to call the master video/mp4.
FTYP = (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41"
        b"\x00\x00\x00\x08free")
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


# --- the sink: a fast upload target and callback recorder, in its own process ---------------


class _SinkProtocol(asyncio.BufferedProtocol):
    """HTTP/1.1 with Content-Length bodies only (S3-style PUTs refuse chunked too), keep-alive.

    PUT: the body is counted and dropped. POST: the body is kept (callbacks are small).
    GET /records: every finished request so far, as JSON.
    """

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.buf = bytearray(4 * MiB)
        self.view = memoryview(self.buf)
        self.head = bytearray()
        self.remaining = 0
        self.in_body = False
        self.req: dict[str, Any] = {}
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        while data:
            if self.in_body:
                take = min(self.remaining, len(data))
                if self.req["method"] != "PUT":
                    self.body += data[:take]
                self.remaining -= take
                data = data[take:]
                if self.remaining == 0:
                    self._finish()
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._reply(431, b"{}", close=True)
                return
            rest = bytes(self.head[end + 4:])
            self._start(bytes(self.head[:end]))
            self.head = bytearray()
            data = memoryview(rest)
            if not self.in_body:
                self._finish()

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.req = {"method": method, "path": target.split("?", 1)[0], "headers": headers,
                    "started": time.time()}
        self.body = bytearray()
        if headers.get("transfer-encoding"):
            self._reply(411, b'{"error":"chunked bodies refused"}', close=True)
            return
        if headers.get("expect", "").lower() == "100-continue":
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.remaining = int(headers.get("content-length", "0"))
        self.in_body = self.remaining > 0

    def _finish(self) -> None:
        self.in_body = False
        req = self.req
        if req["method"] == "GET" and req["path"] == "/records":
            self._reply(200, json.dumps(self.records).encode())
            return
        declared = int(req["headers"].get("content-length", "0"))
        record = {"method": req["method"], "path": req["path"], "declared": declared,
                  "started": req["started"], "finished": time.time(),
                  "content_type": req["headers"].get("content-type")}
        if req["method"] == "PUT":
            record["bytes"] = declared  # every byte was read before we got here
        else:
            record["body"] = bytes(self.body).decode("utf-8", "replace")
        self.records.append(record)
        self._reply(200, b"{}")

    def _reply(self, status: int, body: bytes, close: bool = False) -> None:
        assert self.transport is not None
        head = (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                + ("connection: close\r\n" if close else "") + "\r\n")
        self.transport.write(head.encode() + body)
        if close:
            self.transport.close()


def serve_sink() -> None:
    """Run the sink until killed; print its port on the first line of stdout."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        records: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SinkProtocol(records), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# --- the harness ----------------------------------------------------------------------------


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
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
        first = FTYP + os.urandom(min(size, MiB) - len(FTYP))
        f.write(first)
        hasher.update(first)
        left = size - len(first)
        while left > 0:
            block = os.urandom(min(MiB, left))
            f.write(block)
            hasher.update(block)
            left -= len(block)
    return hasher.hexdigest()


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system CPU seconds of waited-for child processes (and theirs) so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Case:
    source: str
    size: int
    baseline_s: list[float] = field(default_factory=list)
    fulfiller_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)  # the upload step alone, from the job's attempts
    baseline_cpu: list[float] = field(default_factory=list)  # CPU seconds of the curl processes
    fulfiller_cpu: list[float] = field(default_factory=list)  # CPU seconds of the fulfiller process, all threads
    hwm_warm: int = 0
    hwm: int = 0
    rss: int = 0


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, **AWS_ENV}
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            self.env.pop(key, None)
        self.masters = tmp / "masters"
        self.sink = ""
        self.moto = ""
        self.s3: Any = None
        self.hashes: dict[str, str] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of the last run of each side
        self.fulfiller_pid = 0
        self.current_source = ""
        self.fulfiller: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "fulfiller.log"

    # infrastructure

    def start_sink(self) -> None:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-sink"], stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        self.sink = f"http://127.0.0.1:{int(proc.stdout.readline())}"

    def records(self) -> list[dict[str, Any]]:
        return get_json(f"{self.sink}/records")

    def start_moto(self) -> None:
        port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        self.moto = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{self.moto}/moto-api/", timeout=1).status == 200,
                   30, "moto server", 0.1)
        import boto3

        os.environ.update(AWS_ENV)
        self.s3 = boto3.session.Session().client("s3", endpoint_url=self.moto, region_name="us-east-1")
        self.s3.create_bucket(Bucket=BUCKET)

    def prepare(self, sources: list[str], sizes: list[int]) -> None:
        for size in [64 * 1024, *sizes]:  # the first is the warm-up master
            code = f"SZ-{human(size)}"
            path = self.masters / code / "v2" / "en" / "9x16.mp4"
            print(f"generating {human(size)} master ...", flush=True)
            self.hashes[code] = make_master(path, size)
            if "s3" in sources:
                with open(path, "rb") as f:
                    self.s3.put_object(Bucket=BUCKET, Key=f"{code}/v2/en/9x16.mp4", Body=f)

    def write_config(self, port: int) -> Path:
        catalog = (
            {"type": "local", "root": str(self.masters)}
            if self.current_source == "local"
            else {"type": "s3", "bucket": BUCKET, "region": "us-east-1", "endpoint_url": self.moto}
        )
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
            "catalogs": {"bench": catalog},
            "routes": [{"codes": ["*"], "catalog": "bench"}],
        }
        path = self.tmp / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start_fulfiller(self) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        config = self.write_config(port)
        self.log_path = self.tmp / f"fulfiller-{self.current_source}.log"
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "fulfiller.cli", "serve", "--config", str(config)],
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

    # one transfer each way

    def run_baseline(self, size: int, tag: str) -> float:
        code = f"SZ-{human(size)}"
        url = f"{self.sink}/upload/{tag}"
        if self.current_source == "local":
            path = self.masters / code / "v2" / "en" / "9x16.mp4"
            cmd = ["curl", "-sS", "-f", "--max-time", "600", "-o", os.devnull, "-H", "Expect:",
                   "-H", "Content-Type: video/mp4", "-T", str(path), url]
        else:
            get = self.s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                                       "Key": f"{code}/v2/en/9x16.mp4"})
            # curl -T - would send chunked: drop Transfer-Encoding and state the length instead.
            cmd = ["bash", "-o", "pipefail", "-c",
                   f"curl -sS -f --max-time 600 '{get}' | curl -sS -f --max-time 600 -o {os.devnull} -T - "
                   f"-H 'Transfer-Encoding:' -H 'Expect:' -H 'Content-Length: {size}' "
                   f"-H 'Content-Type: video/mp4' '{url}'"]
        before = children_cpu()
        started = time.perf_counter()
        subprocess.run(cmd, check=True)
        elapsed = time.perf_counter() - started
        self.cpu["baseline"] = children_cpu() - before
        self.expect_upload(f"/upload/{tag}", size)
        return elapsed

    def run_fulfiller(self, base: str, size: int, tag: str) -> tuple[float, float]:
        """End-to-end seconds (event POST to callback) and the upload step's own seconds."""
        from fulfiller.testevent import sample_event, signed_headers

        code = f"SZ-{human(size)}"
        upload = f"{self.sink}/upload/{tag}?X-Amz-Signature=bench"
        callback = f"{self.sink}/callback/{tag}"
        body = json.dumps(sample_event(upload, callback, code=code)).encode()
        headers = signed_headers(body, [SECRET], topic="video.source_requested", event_id=f"evt_{tag}")
        cpu_before = process_cpu(self.fulfiller_pid)
        started_wall = time.time()
        req = urllib.request.Request(f"{base}/webhooks/outpost", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202, resp.status
            event = json.loads(resp.read())
        assert event["status"] == "accepted"

        def callback_in() -> dict[str, Any] | None:
            self.alive()
            return next((r for r in self.records() if r["path"] == f"/callback/{tag}"), None)

        # Not the admin API: polling it would spend the fulfiller's CPU during the measurement.
        record = wait_until(callback_in, 60 + size / (10 * MiB), f"the callback of {tag} (see {self.log_path})", 0.02)
        elapsed = record["finished"] - started_wall
        self.cpu["fulfiller"] = process_cpu(self.fulfiller_pid) - cpu_before
        self.expect_upload(f"/upload/{tag}", size)
        body_in = json.loads(record["body"])
        want = f"sha256:{self.hashes[code]}"
        if body_in.get("contentHash") != want:
            raise SystemExit(f"wrong contentHash for {tag}: {body_in}")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listed = get_json(f"{base}/admin/jobs?limit=1", auth)["jobs"][0]

        def finished() -> dict[str, Any] | None:  # the final status is committed just after the callback
            job = get_json(f"{base}/admin/jobs/{listed['id']}", auth)
            return job if job["status"] not in ("queued", "running") else None

        job = wait_until(finished, 30, f"job {listed['id']} to finish", 0.02)
        if job["status"] != "completed":
            raise SystemExit(f"job {job['id']} ended {job['status']}: {job.get('error')}")
        upload_ms = sum(a["duration_ms"] for a in job["attempts"] if a["step"] == "upload")
        return elapsed, upload_ms / 1000

    def expect_upload(self, path: str, size: int) -> None:
        got = [r for r in self.records() if r["path"] == path]
        if len(got) != 1 or got[0]["bytes"] != size:
            raise SystemExit(f"sink saw {got} for {path}, expected one PUT of {size} bytes")

    # the whole thing

    def run(self) -> list[Case]:
        sources = self.args.sources
        sizes = self.args.sizes
        self.start_sink()
        if "s3" in sources:
            self.start_moto()
        self.prepare(sources, sizes)
        cases = []
        for source in sources:
            self.current_source = source
            for size in sizes:
                case = Case(source, size)
                proc, base = self.start_fulfiller()
                self.fulfiller_pid = proc.pid
                try:
                    self.run_fulfiller(base, 64 * 1024, f"{source}-warmup-{uuid.uuid4().hex[:6]}")
                    case.hwm_warm = proc_status(proc.pid)["VmHWM"]
                    for i in range(self.args.repeat):
                        tag = f"{source}-{human(size)}-{i}-{uuid.uuid4().hex[:6]}"
                        case.baseline_s.append(self.run_baseline(size, tag + "-base"))
                        e2e, up = self.run_fulfiller(base, size, tag)
                        case.fulfiller_s.append(e2e)
                        case.upload_s.append(up)
                        case.baseline_cpu.append(self.cpu["baseline"])
                        case.fulfiller_cpu.append(self.cpu["fulfiller"])
                        print(f"  {source:5} {human(size):>5} run {i + 1}: baseline {mbps(size, case.baseline_s[-1])}"
                              f"  fulfiller {mbps(size, e2e)} (upload step {mbps(size, up)})", flush=True)
                    status = proc_status(proc.pid)
                    case.hwm, case.rss = status["VmHWM"], status["VmRSS"]
                finally:
                    self.stop(proc)
                cases.append(case)
        return cases

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / MiB:7.0f} MiB/s"


def report(cases: list[Case]) -> bool:
    print()
    print("median of each side's runs; throughput in MiB/s; CPU in seconds per GiB moved; RSS in MB (10^6 bytes)")
    print(f"{'source':6} {'size':>5} | {'baseline':>8} {'fulfiller':>9} {'ratio':>6} | {'upload':>7} {'ratio':>6} "
          f"| {'cpu base':>8} {'cpu fulf':>8} | {'VmHWM':>6} {'(warm)':>6} {'VmRSS':>6}")
    ok = True
    for c in cases:
        gib = c.size / (1 << 30)
        base = c.size / statistics.median(c.baseline_s) / MiB
        full = c.size / statistics.median(c.fulfiller_s) / MiB
        up = c.size / statistics.median(c.upload_s) / MiB
        ratio, up_ratio = full / base, up / base
        ok &= ratio >= 0.9 and c.hwm < 150e6
        print(f"{c.source:6} {human(c.size):>5} | {base:8.0f} {full:9.0f} {ratio:6.2f} | {up:7.0f} {up_ratio:6.2f} "
              f"| {statistics.median(c.baseline_cpu) / gib:8.2f} {statistics.median(c.fulfiller_cpu) / gib:8.2f} "
              f"| {c.hwm / 1e6:6.1f} {c.hwm_warm / 1e6:6.1f} {c.rss / 1e6:6.1f}")
    print()
    print("fulfiller = end to end, event POST to callback received; upload = the job's upload step alone;")
    print("cpu base = the curl processes; cpu fulf = the whole fulfiller process (all threads)")
    print("(warm) = VmHWM after the 64 KiB warm-up job, before the measured runs")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (started at {LOAD_AT_START[0]:.1f})")
    print("goals: ratio >= 0.9, VmHWM < 150 MB and flat across sizes:", "met" if ok else "NOT met")
    return ok


def main() -> int:
    if sys.argv[1:] == ["--serve-sink"]:
        serve_sink()
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100M,1G", type=lambda s: [parse_size(x) for x in s.split(",")])
    parser.add_argument("--sources", default="local,s3", type=lambda s: [x.strip() for x in s.split(",")])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per case (median reported)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="worker.chunk_bytes for the fulfiller")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (masters, logs)")
    args = parser.parse_args()
    if bad := set(args.sources) - {"local", "s3"}:
        parser.error(f"unknown source(s) {sorted(bad)}; use local, s3")
    if not shutil.which("curl"):
        parser.error("curl is needed for the baseline")
    tmp = Path(tempfile.mkdtemp(prefix="fulfiller-bench-"))
    bench = Bench(args, tmp)
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
    sys.exit(main())
