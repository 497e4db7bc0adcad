"""Drive benchmark: a big master from the Drive v3 double through ``fulfiller serve``, against a plain copy.

For each size, one run is:

* baselines: the same bytes with no logic at all, GET from the double's
  ``alt=media`` URL (with a bearer token) into a PUT to the sink with a fixed
  Content-Length: ``curl | curl``, and the same copy in Python with httpx (one
  streaming GET fed to one streaming PUT, no hashing: the fulfiller's own HTTP
  stack without the fulfiller);
* fulfiller: a signed ``video.source_requested`` event POSTed to a fresh
  ``fulfiller serve`` process whose only catalog is ``type: drive`` on the
  double, timed until its completion callback reaches the sink (end to end:
  receive, store, claim, token grant, folder walk, sniff, stream + md5 +
  sha256, callback).

Both sides read from the same double, so its own serving speed is shared. It
runs in its own process and serves each master from a file on disk, streamed
(``add_file(..., path=...)``), so a gigabyte never sits in its memory. The
upload URL and the callback go to a minimal sink in a third process (raw
asyncio: PUT bodies are counted and dropped, POST bodies kept), so the
measurement is of the sender. CPU seconds per GiB (user + system, of the
fulfiller process, or of the baseline's processes) are reported too: on a
busy machine they hold steadier than throughput. Peak RSS is the fulfiller's VmHWM from /proc,
read after its jobs; each size gets a fresh fulfiller (after one small warm-up
job) so its VmHWM belongs to that size alone.

    .venv/bin/python bench/drive.py --sizes 100M,1G

Needs Linux (/proc) and curl; imports the Drive double from tests/support.
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
SECRET = "bench-signing-secret"
ADMIN_TOKEN = "bench-admin-token"
BASELINE_TOKEN = "ya29.bench-baseline"
WARMUP = 64 * 1024
# An ISO BMFF "ftyp" box: enough for libmagic to call the master video/mp4.
FTYP = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free"
TESTS = Path(__file__).resolve().parent.parent / "tests"


# --- the Drive double, in its own process ----------------------------------------------------


def serve_drive(spec_path: str) -> None:
    """Serve the double with each master of the spec as a file; print its coordinates as one JSON line."""
    sys.path.insert(0, str(TESTS))
    from support.drive_double import run_drive_double

    spec = json.loads(Path(spec_path).read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with run_drive_double() as drive:
        root = drive.add_folder("Bench Masters")
        files = {}
        for code, path in spec["masters"].items():
            leaf = drive.add_folders(f"{code}/v2/en", root)
            files[code] = drive.add_file("9x16.mp4", leaf, path=Path(path), mime_type="video/mp4")
        drive.tokens[BASELINE_TOKEN] = time.time() + 86400  # for curl: what a granted token looks like
        key_file = drive.write_service_account(Path(spec["workdir"]))
        print(json.dumps({"api_endpoint": drive.api_endpoint, "root": root, "files": files,
                          "key_file": str(key_file)}), flush=True)
        stop.wait()


# --- the httpx baseline, in its own process --------------------------------------------------


def plain_copy(get_url: str, put_url: str, size: int) -> None:
    """One streaming GET into one streaming PUT with httpx: what any Python copy would do.

    Prints the copy's own seconds and CPU seconds (interpreter start-up and imports left out) as JSON.
    """
    import httpx

    async def main() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            auth = {"Authorization": f"Bearer {BASELINE_TOKEN}", "Accept-Encoding": "identity"}
            async with client.stream("GET", get_url, headers=auth) as source:
                source.raise_for_status()
                headers = {"Content-Type": "video/mp4", "Content-Length": str(size)}
                response = await client.put(put_url, content=source.aiter_raw(), headers=headers)
                response.raise_for_status()

    cpu, started = time.process_time(), time.perf_counter()
    asyncio.run(main())
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu}))


# --- the sink: a fast upload target and callback recorder, in its own process ---------------


class _Sink(asyncio.BufferedProtocol):
    """HTTP/1.1 with Content-Length bodies only (S3-style PUTs refuse chunked too), keep-alive.

    PUT: the body is counted and dropped. POST: the body is kept. GET /records: what finished, as JSON.
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


def serve_sink() -> None:
    """Run the sink until killed; print its port on the first line of stdout."""

    async def main() -> None:
        records: list[dict[str, Any]] = []
        server = await asyncio.get_running_loop().create_server(lambda: _Sink(records), "127.0.0.1", 0)
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


def mibps(size: int, seconds: float) -> float:
    return size / seconds / MiB


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
    """Random bytes behind an MP4 ftyp box, written in 1 MiB blocks; the SHA-256 hex."""
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
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


@dataclass
class Case:
    size: int
    curl_s: list[float] = field(default_factory=list)
    httpx_s: list[float] = field(default_factory=list)
    fulfiller_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)  # the job's upload step alone, from its attempts
    curl_cpu: list[float] = field(default_factory=list)
    httpx_cpu: list[float] = field(default_factory=list)
    fulfiller_cpu: list[float] = field(default_factory=list)
    hwm_warm: int = 0
    hwm: int = 0
    rss: int = 0


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sink = ""
        self.drive: dict[str, Any] = {}
        self.hashes: dict[str, str] = {}

    @staticmethod
    def code(size: int) -> str:
        return f"DRV-{human(size)}"

    # infrastructure

    def start_sink(self) -> None:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-sink"], stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        self.sink = f"http://127.0.0.1:{int(proc.stdout.readline())}"

    def records(self) -> list[dict[str, Any]]:
        return get_json(f"{self.sink}/records")

    def start_drive(self, sizes: list[int]) -> None:
        masters = {}
        for size in [WARMUP, *sizes]:
            path = self.tmp / "masters" / f"{human(size)}.mp4"
            print(f"generating {human(size)} master ...", flush=True)
            self.hashes[self.code(size)] = make_master(path, size)
            masters[self.code(size)] = str(path)
        spec = self.tmp / "drive-spec.json"
        spec.write_text(json.dumps({"workdir": str(self.tmp), "masters": masters}))
        print("starting the Drive double (it hashes each master once) ...", flush=True)
        proc = subprocess.Popen([sys.executable, __file__, "--serve-drive", str(spec)], stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("the Drive double did not start")
        self.drive = json.loads(line)

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
            "catalogs": {"drive": {"type": "drive", "root_folder_id": self.drive["root"],
                                   "credentials_file": self.drive["key_file"],
                                   "api_endpoint": self.drive["api_endpoint"]}},
            "routes": [{"codes": ["*"], "catalog": "drive"}],
        }
        path = self.tmp / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        log = open(self.tmp / "fulfiller.log", "ab")  # noqa: SIM115 (the child holds it)
        proc = subprocess.Popen([sys.executable, "-m", "fulfiller.cli", "serve", "--config", str(path)],
                                stdout=log, stderr=log, cwd=self.tmp)
        self.procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, 30, "fulfiller", 0.05)
        return proc, base

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

    def run_baseline(self, how: str, size: int, tag: str) -> tuple[float, float]:
        """Seconds and CPU seconds of one plain copy, ``how`` being curl or httpx."""
        file_id = self.drive["files"][self.code(size)]
        get = f"{self.drive['api_endpoint']}files/{file_id}?alt=media&supportsAllDrives=true"
        put = f"{self.sink}/upload/{tag}"
        if how == "curl":
            # curl -T - would send chunked: drop Transfer-Encoding and state the length instead.
            cmd = ["bash", "-o", "pipefail", "-c",
                   f"curl -sS -f -H 'Authorization: Bearer {BASELINE_TOKEN}' '{get}' | "
                   f"curl -sS -f -o {os.devnull} -T - -H 'Transfer-Encoding:' -H 'Expect:' "
                   f"-H 'Content-Length: {size}' -H 'Content-Type: video/mp4' '{put}'"]
        else:
            out = subprocess.run([sys.executable, __file__, "--plain-copy", get, put, str(size)], check=True,
                                 stdout=subprocess.PIPE).stdout
            self.expect_upload(f"/upload/{tag}", size)
            timed = json.loads(out)
            return timed["seconds"], timed["cpu"]
        cpu, started = children_cpu(), time.perf_counter()
        subprocess.run(cmd, check=True)
        elapsed, cpu = time.perf_counter() - started, children_cpu() - cpu
        self.expect_upload(f"/upload/{tag}", size)
        return elapsed, cpu

    def run_fulfiller(self, base: str, size: int, tag: str) -> tuple[float, float]:
        """End-to-end seconds (event POST to callback received) and the upload step's own seconds.

        The time is the sink's (callback arrival) less this process's (event sent): one clock, one machine.
        """
        from fulfiller.testevent import sample_event, signed_headers

        code = self.code(size)
        upload = f"{self.sink}/upload/{tag}?X-Amz-Signature=bench"
        callback = f"{self.sink}/callback/{tag}"
        body = json.dumps(sample_event(upload, callback, code=code)).encode()
        headers = signed_headers(body, [SECRET], topic="video.source_requested", event_id=f"evt_{tag}")
        started = time.time()
        req = urllib.request.Request(f"{base}/webhooks/outpost", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202, resp.status

        def callback_in() -> dict[str, Any] | None:
            return next((r for r in self.records() if r["path"] == f"/callback/{tag}"), None)

        record = wait_until(callback_in, 900, f"callback {tag}", 0.02)
        elapsed = record["finished"] - started
        self.expect_upload(f"/upload/{tag}", size)
        got = json.loads(record["body"])
        if got.get("contentHash") != f"sha256:{self.hashes[code]}":
            raise SystemExit(f"wrong callback for {tag}: {got}")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listed = get_json(f"{base}/admin/jobs?limit=1", auth)["jobs"][0]
        # The callback is answered before the job's final write: wait for that write.
        job = wait_until(lambda: (j := get_json(f"{base}/admin/jobs/{listed['id']}", auth))["status"] != "running"
                         and j, 30, f"job {listed['id']} to finish", 0.02)
        if job["status"] != "completed":
            raise SystemExit(f"job {job['id']} is {job['status']}: {job.get('error')}")
        upload_ms = sum(a["duration_ms"] for a in job["attempts"] if a["step"] == "upload")
        return elapsed, upload_ms / 1000

    def expect_upload(self, path: str, size: int) -> None:
        got = [r for r in self.records() if r["path"] == path]
        if len(got) != 1 or got[0]["bytes"] != size or got[0]["declared"] != size:
            raise SystemExit(f"sink saw {got} for {path}, expected one PUT of {size} bytes")

    # the whole thing

    def run(self) -> list[Case]:
        sizes = self.args.sizes
        self.start_sink()
        self.start_drive(sizes)
        cases = []
        for size in sizes:
            case = Case(size)
            proc, base = self.start_fulfiller()
            try:
                self.run_fulfiller(base, WARMUP, f"warmup-{uuid.uuid4().hex[:6]}")
                case.hwm_warm = proc_status(proc.pid)["VmHWM"]
                for i in range(self.args.repeat):
                    tag = f"{human(size)}-{i}-{uuid.uuid4().hex[:6]}"
                    seconds, cpu = self.run_baseline("curl", size, tag + "-curl")
                    case.curl_s.append(seconds)
                    case.curl_cpu.append(cpu)
                    seconds, cpu = self.run_baseline("httpx", size, tag + "-httpx")
                    case.httpx_s.append(seconds)
                    case.httpx_cpu.append(cpu)
                    cpu = cpu_seconds(proc.pid)
                    e2e, up = self.run_fulfiller(base, size, tag)
                    case.fulfiller_cpu.append(cpu_seconds(proc.pid) - cpu)
                    case.fulfiller_s.append(e2e)
                    case.upload_s.append(up)
                    print(f"  {human(size):>5} run {i + 1}: curl {mibps(size, case.curl_s[-1]):6.0f}"
                          f"  httpx {mibps(size, case.httpx_s[-1]):6.0f}"
                          f"  fulfiller {mibps(size, e2e):6.0f} (upload step {mibps(size, up):6.0f}) MiB/s",
                          flush=True)
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


def report(cases: list[Case], chunk_bytes: int) -> bool:
    print()
    print(f"Drive double -> sink, worker.chunk_bytes={chunk_bytes}, median of each side's runs")
    print("throughput in MiB/s; CPU in seconds per GiB moved; RSS in MB (10^6 bytes)")
    print(f"{'size':>5} | {'curl':>5} {'httpx':>5} {'fulf.':>5} {'upload':>6} | {'ratio/curl':>10} {'ratio/httpx':>11} "
          f"| {'cpu curl':>8} {'httpx':>5} {'fulf.':>5} | {'VmHWM':>6} {'(warm)':>6} {'VmRSS':>6}")
    ok = True
    for c in cases:
        curl, plain = mibps(c.size, statistics.median(c.curl_s)), mibps(c.size, statistics.median(c.httpx_s))
        full, up = mibps(c.size, statistics.median(c.fulfiller_s)), mibps(c.size, statistics.median(c.upload_s))
        per_gib = (1 << 30) / c.size
        cpu = [statistics.median(x) * per_gib for x in (c.curl_cpu, c.httpx_cpu, c.fulfiller_cpu)]
        ok &= full / curl >= 0.9 and c.hwm < 150e6
        print(f"{human(c.size):>5} | {curl:5.0f} {plain:5.0f} {full:5.0f} {up:6.0f} | {full / curl:10.2f} "
              f"{full / plain:11.2f} | {cpu[0]:8.2f} {cpu[1]:5.2f} {cpu[2]:5.2f} "
              f"| {c.hwm / 1e6:6.1f} {c.hwm_warm / 1e6:6.1f} {c.rss / 1e6:6.1f}")
    print()
    print("curl = curl GET (bearer token) | curl PUT; httpx = one streaming GET fed to one PUT, in Python;")
    print("fulf. = the fulfiller end to end, event POST to callback received; upload = its upload step alone")
    print("(Drive GET, md5 + sha256, PUT); ratios are of the end-to-end figure")
    print("goals: ratio/curl >= 0.9, VmHWM < 150 MB and flat across sizes:", "met" if ok else "NOT met")
    return ok


def main() -> int:
    if sys.argv[1:] == ["--serve-sink"]:
        serve_sink()
        return 0
    if sys.argv[1:2] == ["--plain-copy"]:
        plain_copy(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if sys.argv[1:2] == ["--serve-drive"]:
        serve_drive(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100M,1G", type=lambda s: [parse_size(x) for x in s.split(",")])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per size (median reported)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="worker.chunk_bytes for the fulfiller")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (masters, logs)")
    args = parser.parse_args()
    if not shutil.which("curl"):
        parser.error("curl is needed for the baseline")
    tmp = Path(tempfile.mkdtemp(prefix="fulfiller-drive-bench-"))
    bench = Bench(args, tmp)
    try:
        ok = report(bench.run(), args.chunk_bytes)
    finally:
        bench.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
