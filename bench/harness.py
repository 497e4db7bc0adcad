"""What the benchmarks share: their server processes, figures from /proc, and for the transfer benchmarks
the sink (a minimal upload target and callback recorder, in its own process so that what is measured is
the sender), the run of one master per size through a fresh ``fulfiller serve``, and the report.

The benchmarks import this module as a sibling: their own folder is first on ``sys.path``. It is
longer than one concept's module because it holds every piece two benchmarks would otherwise repeat,
so that each benchmark script reads top to bottom as what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
SECRET = "whsec_bench-signing-secret"
WARMUP = 64 * 1024  # the warm-up master each fresh fulfiller moves before it is measured
# An ISO BMFF "ftyp" box: enough for libmagic to call the master video/mp4.
FTYP = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free"

# A plain copy of ``size`` bytes to ``put_url``: its seconds and CPU seconds.
Copy = Callable[[int, str], tuple[float, float]]


# --- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true (an OSError counts as not yet); that value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if result := check():
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def start_server(cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None,
                 health: str = "/healthz") -> subprocess.Popen[bytes]:
    """Run ``cmd``, which serves 127.0.0.1:``port``, with its output appended to ``log``; return once
    ``health`` answers 200."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"{shlex.join(cmd)} exited with {proc.returncode}:\n{tail(log)}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=1) as response:
            return response.status == 200

    wait_until(healthy, 30, f"{cmd[0]} to answer {health}")
    return proc


def start_fulfiller(workdir: Path, config: dict[str, Any], *, worker: bool,
                    env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``fulfiller serve`` on a free port with ``config`` (and :data:`SECRET` to sign with); its base URL."""
    port = free_port()
    path = workdir / "fulfiller.yaml"
    path.write_text(json.dumps({"receiver": {"secrets": [SECRET]}, **config}))  # JSON is YAML
    cmd = [sys.executable, "-m", "fulfiller.cli", "serve", "--config", str(path), "--host", "127.0.0.1",
           "--port", str(port), *([] if worker else ["--no-worker"])]
    return start_server(cmd, port, workdir / "fulfiller.log", env), f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not gone in 40 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- figures from /proc ---------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, all its threads (not its child processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm(pid: int) -> int:
    """Peak resident memory of ``pid`` in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:", 1)[1].split()[0]) * 1024


def timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds and CPU seconds (of its processes) of running ``cmd``."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime


# --- the sink -------------------------------------------------------------------------------------


class Sink(asyncio.BufferedProtocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only (as S3-style PUTs): a PUT's body is counted and
    dropped, a POST's kept; ``GET /records`` answers with every request finished so far."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.buffer = memoryview(bytearray(4 * MiB))
        self.head = bytearray()
        self.req: dict[str, Any] | None = None
        self.left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        while data:
            if self.req is None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data = memoryview(self.head[end + 4:])
                self.start(self.head[:end].decode("latin-1"))
                self.head = bytearray()
                if self.req is None:
                    return
            take = min(self.left, len(data))
            self.req["bytes"] += take
            if self.req["method"] != "PUT":
                self.req["body"] += bytes(data[:take])
            self.left -= take
            data = data[take:]
            if self.left == 0:
                self.finish()

    def start(self, head: str) -> None:
        first, *lines = head.split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
        if "transfer-encoding" in headers:
            self.reply(411, b'{"error":"chunked bodies refused"}')
            self.transport.close()
            return
        self.left = int(headers.get("content-length", "0"))
        self.req = {"method": method, "path": target.split("?", 1)[0], "declared": self.left, "bytes": 0, "body": b""}

    def finish(self) -> None:
        req, self.req = self.req, None
        assert req is not None
        if req["method"] == "GET" and req["path"] == "/records":
            self.reply(200, json.dumps(self.records).encode())
            return
        self.records.append({**req, "finished": time.time(), "body": req["body"].decode("utf-8", "replace")})
        self.reply(200, b"{}")

    def reply(self, status: int, body: bytes) -> None:
        self.transport.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, len(body), body))


def serve_sink() -> None:
    """Run the sink until killed; print its port on the first line of stdout."""
    import uvloop

    async def main() -> None:
        records: list[dict[str, Any]] = []
        server = await asyncio.get_running_loop().create_server(lambda: Sink(records), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    uvloop.run(main())


# --- the transfer benchmarks ----------------------------------------------------------------------


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def human(size: int) -> str:
    for unit, n in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n}{unit}"
    return str(size)


def make_master(path: Path, size: int) -> str:
    """Random bytes behind an MP4 ftyp box, written in 1 MiB blocks; their SHA-256 hex."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for at in range(0, size, MiB):
            block = os.urandom(min(MiB, size - at))
            if at == 0:
                block = FTYP + block[len(FTYP):]
            f.write(block)
            sha.update(block)
    return sha.hexdigest()


def sha256_speed(total: int = 256 * MiB) -> float:
    """MiB/s of hashlib's SHA-256 on one core now: the most a transfer that hashes every byte can reach."""
    block = os.urandom(4 * MiB)
    sha = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(total // len(block)):
        sha.update(block)
    return total / (time.perf_counter() - started) / MiB


def curl_pipe(get_url: str, size: int, put_url: str, get_headers: Sequence[str] = ()) -> tuple[float, float]:
    """``curl GET | curl PUT``: the same bytes with no logic. The PUT states the length, as the
    fulfiller's does (``curl -T -`` alone would send chunked); if the GET fails, the PUT gives up
    waiting for the rest of its body after ``--max-time``."""
    get = ["curl", "-sSf", "--max-time", "600", *(arg for header in get_headers for arg in ("-H", header)), get_url]
    put = ["curl", "-sSf", "--max-time", "600", "-o", os.devnull, "-T", "-", "-H", "Transfer-Encoding:",
           "-H", "Expect:", "-H", f"Content-Length: {size}", "-H", "Content-Type: video/mp4", put_url]
    return timed(["bash", "-o", "pipefail", "-c", f"{shlex.join(get)} | {shlex.join(put)}"])


@dataclass
class Case:
    source: str
    size: int
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per side: each baseline, then "fulfiller"
    cpu: dict[str, list[float]] = field(default_factory=dict)  # CPU seconds, likewise
    sha256: list[float] = field(default_factory=list)  # SHA-256 alone on one core, MiB/s, after each baseline
    hwm: int = 0  # the fulfiller's VmHWM after its jobs

    def add(self, side: str, seconds: float, cpu: float) -> None:
        self.seconds.setdefault(side, []).append(seconds)
        self.cpu.setdefault(side, []).append(cpu)

    def mibps(self, side: str) -> float:
        return self.size / statistics.median(self.seconds[side]) / MiB

    def cpu_per_gib(self, side: str) -> float:
        return statistics.median(self.cpu[side]) * (1 << 30) / self.size


class TransferBench:
    """Each size's master through a fresh ``fulfiller serve`` per (source, size), beside plain copies.

    A subclass serves the masters (:meth:`start`; they are on disk by then, at
    :meth:`master`) and gives each source's catalog and baselines; the goals are
    set against the baseline named ``curl | curl``.
    """

    sources: list[str]

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.env: dict[str, str] | None = None  # the fulfiller's environment (None: this one's)
        self.procs: list[subprocess.Popen[bytes]] = []  # the helpers, stopped by close()
        self.hashes: dict[int, str] = {}  # size -> SHA-256 hex of its master
        self.sink = ""

    def start(self) -> None:
        """Serve the masters from each source."""

    def catalog(self, source: str) -> dict[str, Any]:
        raise NotImplementedError

    def baselines(self, source: str) -> dict[str, Copy]:
        raise NotImplementedError

    def code(self, size: int) -> str:
        return f"BENCH-{human(size)}"

    def master(self, size: int) -> Path:
        """Where the master of ``size`` is, laid out as a local catalog finds it."""
        return self.tmp / "masters" / self.code(size) / "v2" / "en" / "9x16.mp4"

    def helper(self, cmd: list[str]) -> str:
        """Start a helper process that prints one line when it is ready; that line."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        self.procs.append(proc)
        assert proc.stdout is not None
        if not (line := proc.stdout.readline().decode()):
            raise SystemExit(f"{shlex.join(cmd)} did not start")
        return line

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)

    def run(self) -> list[Case]:
        self.sink = f"http://127.0.0.1:{int(self.helper([sys.executable, __file__, '--serve-sink']))}"
        for size in [WARMUP, *self.args.sizes]:
            print(f"generating the {human(size)} master ...", flush=True)
            self.hashes[size] = make_master(self.master(size), size)
        self.start()
        return [self.run_case(source, size) for source in self.sources for size in self.args.sizes]

    def run_case(self, source: str, size: int) -> Case:
        """A fresh fulfiller (its VmHWM is this size's alone) and ``--repeat`` runs of every side."""
        case = Case(source, size)
        name = f"{source}-{human(size)}"
        config = {
            "state": f"sqlite:///{self.tmp / name}.db",
            "worker": {"concurrency": 1, "allow_insecure_http": True, "allowed_upload_hosts": ["127.0.0.1"],
                       "allowed_callback_hosts": ["127.0.0.1"]},
            "catalogs": {source: self.catalog(source)},
            "routes": [{"codes": ["*"], "catalog": source}],
        }
        proc, base = start_fulfiller(self.tmp, config, worker=True, env=self.env)
        try:
            self.send_event(proc, base, WARMUP, f"{name}-warmup")
            for i in range(self.args.repeat):
                for j, (side, copy) in enumerate(self.baselines(source).items()):
                    case.add(side, *copy(size, f"{self.sink}/upload/{name}-{i}-{j}"))
                    self.expect_upload(f"{name}-{i}-{j}", size)
                case.sha256.append(sha256_speed())
                case.add("fulfiller", *self.send_event(proc, base, size, f"{name}-{i}"))
                print(f"  {name} run {i + 1}: " + ", ".join(
                    f"{side} {size / sides[-1] / MiB:.0f}" for side, sides in case.seconds.items()) + " MiB/s",
                    flush=True)
            case.hwm = vm_hwm(proc.pid)
        finally:
            stop(proc)
        return case

    def send_event(self, proc: subprocess.Popen[bytes], base: str, size: int, tag: str) -> tuple[float, float]:
        """One signed event for the master of ``size``: seconds from its POST to its callback at the sink
        (one clock: this machine's), and the fulfiller's CPU seconds meanwhile. Checks the upload and the
        callback's contentHash."""
        from fulfiller.ops.testevent import sample_event, signed_headers

        event = sample_event(f"{self.sink}/upload/{tag}?X-Amz-Signature=bench", f"{self.sink}/callback/{tag}",
                             code=self.code(size))
        body = json.dumps(event).encode()
        headers = signed_headers(body, [SECRET], topic="video.source_requested", event_id=f"evt_{tag}")
        cpu, started = cpu_s(proc.pid), time.time()
        request = urllib.request.Request(f"{base}/webhooks/outpost", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 202, response.status

        def callback() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise SystemExit(f"fulfiller serve exited with {proc.returncode}:\n{tail(self.tmp / 'fulfiller.log')}")
            return next((r for r in self.records() if r["path"] == f"/callback/{tag}"), None)

        # The sink, not the admin API: polling the fulfiller would spend its CPU during the measurement.
        record = wait_until(callback, 60 + size / (10 * MiB), f"the callback of {tag}")
        elapsed, cpu = record["finished"] - started, cpu_s(proc.pid) - cpu
        self.expect_upload(tag, size)
        if json.loads(record["body"]).get("contentHash") != f"sha256:{self.hashes[size]}":
            raise SystemExit(f"wrong callback for {tag}: {record['body']}\n{tail(self.tmp / 'fulfiller.log')}")
        return elapsed, cpu

    def records(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.sink}/records", timeout=30) as response:
            return json.loads(response.read())

    def expect_upload(self, tag: str, size: int) -> None:
        got = [r for r in self.records() if r["path"] == f"/upload/{tag}"]
        if len(got) != 1 or got[0]["bytes"] != size or got[0]["declared"] != size:
            raise SystemExit(f"the sink saw {got} for {tag}, expected one PUT of {size} bytes")


def report(cases: list[Case]) -> bool:
    """Each case's medians; True when the goals are met."""
    ok = True
    print("\nmedian of each side's runs; CPU seconds per GiB moved; ratio = fulfiller / that side")
    for case in cases:
        fulfiller = case.mibps("fulfiller")
        print(f"{case.source} {human(case.size)}:")
        for side in case.seconds:
            ratio = "" if side == "fulfiller" else f"  ratio {fulfiller / case.mibps(side):.2f}"
            print(f"  {side:<12} {case.mibps(side):6.0f} MiB/s  {case.cpu_per_gib(side):5.2f} CPU-s/GiB{ratio}")
        print(f"  peak RSS (VmHWM) {case.hwm / 1e6:.1f} MB; SHA-256 alone on one core "
              f"{statistics.median(case.sha256):.0f} MiB/s")
        ok &= fulfiller / case.mibps("curl | curl") >= 0.9 and case.hwm < 150e6
    print("goals, ratio to curl | curl >= 0.9 and VmHWM < 150 MB:", "met" if ok else "NOT met")
    return ok


def arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every transfer benchmark has: --sizes, --repeat."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100M,1G", type=lambda s: [parse_size(x) for x in s.split(",")],
                        help="master sizes (default 100M,1G)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per case; medians reported")
    return parser


def run(bench_class: Callable[[argparse.Namespace, Path], TransferBench], args: argparse.Namespace) -> int:
    """Run a transfer benchmark in a temporary folder; the exit status: 0 when its goals are met."""
    if not shutil.which("curl"):
        sys.exit("curl is needed for the baselines")
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = bench_class(args, tmp)
    try:
        return 0 if report(bench.run()) else 1
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve-sink"]:
        sys.exit("usage: harness.py --serve-sink  (the benchmarks import this module)")
    serve_sink()
