"""What the benchmarks share: their server processes, figures from /proc, and for the transfer benchmarks
the run of one master per size through a fresh ``fulfiller serve`` beside the baselines (``baselines.py``),
uploading to the sink (``sink.py``), and the report.

The benchmarks import this module as a sibling: their own folder is first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baselines import python_copy, sha256_alone

MiB = 1 << 20
SECRET = "whsec_bench-signing-secret"
WARMUP = 64 * 1024  # the warm-up master each fresh fulfiller moves before it is measured
# An ISO BMFF "ftyp" box (enough for libmagic to call the master video/mp4), then the header of an "mdat" box
# (64-bit size) holding the rest of the file. Random bytes read as a box header would send the measurement to
# a random offset for one more, by a range read: on moto, a read of the whole object (``measure.py``).
FTYP = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41\x00\x00\x00\x08free"


def master_head(size: int) -> bytes:
    """The start of a master of ``size`` bytes: :data:`FTYP`, then an "mdat" box to the end."""
    return FTYP + b"\x00\x00\x00\x01mdat" + (size - len(FTYP)).to_bytes(8, "big")

# A plain copy of ``size`` bytes to ``put_url``: its seconds and CPU seconds.
Copy = Callable[[int, str], tuple[float, float]]
# The sides every transfer case has, beside its own baselines.
COPY, HASH, FULFILLER = "python copy", "SHA-256 alone", "fulfiller"
# The goals: hashing and moving overlap (the fulfiller within 1/OVERLAP of the larger of the copy and the hash),
# at little more CPU than both (CPU_OVER times their sum), in flat memory (VmHWM under MAX_HWM at every size,
# the sizes' peaks within HWM_SPREAD of each other).
OVERLAP, CPU_OVER, MAX_HWM, HWM_SPREAD = 0.85, 1.15, 150e6, 0.05


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
                head = master_head(size)
                block = head + block[len(head):]
            f.write(block)
            sha.update(block)
    return sha.hexdigest()


@dataclass
class Case:
    source: str
    size: int
    seconds: dict[str, list[float]] = field(default_factory=dict)  # per side: each baseline, then "fulfiller"
    cpu: dict[str, list[float]] = field(default_factory=dict)  # CPU seconds, likewise
    # CPU seconds of the helper processes (the peer serving the master, the sink) while each side ran
    helpers: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    hwm: int = 0  # the fulfiller's VmHWM after its jobs

    def add(self, side: str, seconds: float, cpu: float, helpers: dict[str, float] | None = None) -> None:
        self.seconds.setdefault(side, []).append(seconds)
        self.cpu.setdefault(side, []).append(cpu)
        for name, used in (helpers or {}).items():
            self.helpers.setdefault(side, {}).setdefault(name, []).append(used)

    def mibps(self, side: str) -> float:
        return self.size / statistics.median(self.seconds[side]) / MiB

    def cpu_per_gib(self, side: str) -> float:
        return statistics.median(self.cpu[side]) * (1 << 30) / self.size

    def helper_cpu_per_gib(self, side: str) -> dict[str, float]:
        """Each helper's median CPU seconds per GiB while ``side`` ran."""
        return {name: statistics.median(used) * (1 << 30) / self.size
                for name, used in self.helpers.get(side, {}).items()}

    def overlap(self) -> float:
        """The larger of the copy's and the hash's time over the fulfiller's: 1 when hashing and moving
        fully overlap at the machine's speed, about half when they add up."""
        limit = max(statistics.median(self.seconds[COPY]), statistics.median(self.seconds[HASH]))
        return limit / statistics.median(self.seconds[FULFILLER])

    def cpu_over(self) -> float:
        """The fulfiller's CPU over the copy's and the hash's together."""
        return self.cpu_per_gib(FULFILLER) / (self.cpu_per_gib(COPY) + self.cpu_per_gib(HASH))


class TransferBench:
    """Each size's master through a fresh ``fulfiller serve`` per (source, size), beside plain copies.

    A subclass serves the masters (:meth:`start`; they are on disk by then, at
    :meth:`master`) and gives each source's catalog, where a plain copy reads the
    master (:meth:`origin`) and its own baselines; every case also runs the
    Python copy and SHA-256 alone, which the goals are set against.
    """

    sources: list[str]

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.env: dict[str, str] | None = None  # the fulfiller's environment (None: this one's)
        self.procs: list[subprocess.Popen[bytes]] = []  # the helpers, stopped by close()
        self.accounted: dict[str, int] = {}  # helpers whose CPU each side's run is charged: name -> pid
        self.hashes: dict[int, str] = {}  # size -> SHA-256 hex of its master
        self.sink = ""

    def start(self) -> None:
        """Serve the masters from each source."""

    def catalog(self, source: str) -> dict[str, Any]:
        raise NotImplementedError

    def baselines(self, source: str) -> dict[str, Copy]:
        raise NotImplementedError

    def origin(self, source: str, size: int) -> tuple[str, list[str]]:
        """Where a plain copy reads the master of ``size`` from this source (a file path or a URL), and the
        headers its GET needs."""
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
        sink = Path(__file__).with_name("sink.py")
        self.sink = f"http://127.0.0.1:{int(self.helper([sys.executable, str(sink)]))}"
        self.accounted["sink"] = self.procs[-1].pid
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
            origin, headers = self.origin(source, size)
            copies = {**self.baselines(source), COPY: lambda size, put: python_copy(origin, size, put, headers)}
            for i in range(self.args.repeat):
                for j, (side, copy) in enumerate(copies.items()):
                    case.add(side, *self.accounting(copy, size, f"{self.sink}/upload/{name}-{i}-{j}"))
                    self.expect_upload(f"{name}-{i}-{j}", size)
                case.add(HASH, *self.accounting(sha256_alone, str(self.master(size))))
                case.add(FULFILLER, *self.accounting(self.send_event, proc, base, size, f"{name}-{i}"))
                print(f"  {name} run {i + 1}: " + ", ".join(
                    f"{side} {size / sides[-1] / MiB:.0f}" for side, sides in case.seconds.items()) + " MiB/s",
                    flush=True)
            case.hwm = vm_hwm(proc.pid)
        finally:
            stop(proc)
        return case

    def accounting(self, side: Callable[..., tuple[float, float]], *args: Any) -> tuple[float, float, dict[str, float]]:
        """``side(*args)``'s seconds and CPU seconds, and the CPU seconds each accounted helper spent meanwhile."""
        before = {name: cpu_s(pid) for name, pid in self.accounted.items()}
        seconds, cpu = side(*args)
        return seconds, cpu, {name: cpu_s(pid) - before[name] for name, pid in self.accounted.items()}

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
    print(f"\nmedian of each side's runs; CPU seconds per GiB moved; ratio = fulfiller's MiB/s / that side's; "
          f"{COPY}: no hashing, the machine's limit")
    for case in cases:
        fulfiller = case.mibps(FULFILLER)
        print(f"{case.source} {human(case.size)}:")
        for side in case.seconds:
            ratio = "" if side == FULFILLER else f"  ratio {fulfiller / case.mibps(side):.2f}"
            helpers = "".join(f", {name} {used:.2f}" for name, used in case.helper_cpu_per_gib(side).items())
            print(f"  {side:<14} {case.mibps(side):6.0f} MiB/s  {case.cpu_per_gib(side):5.2f} CPU-s/GiB{ratio}"
                  + (f"  (meanwhile, CPU-s/GiB{helpers[1:]})" if helpers else ""))
        print(f"  overlap, max({COPY}, {HASH}) time / fulfiller time: {case.overlap():.2f} (goal >= {OVERLAP}); "
              f"CPU / ({COPY} + {HASH}): {case.cpu_over():.2f} (goal <= {CPU_OVER}); "
              f"peak RSS (VmHWM) {case.hwm / 1e6:.1f} MB")
        ok &= case.overlap() >= OVERLAP and case.cpu_over() <= CPU_OVER and case.hwm < MAX_HWM
    for source in dict.fromkeys(case.source for case in cases):
        peaks = [case.hwm for case in cases if case.source == source]
        flat = max(peaks) <= min(peaks) * (1 + HWM_SPREAD)
        print(f"{source}: peak RSS {', '.join(f'{hwm / 1e6:.1f}' for hwm in peaks)} MB across sizes: "
              f"{'flat' if flat else 'NOT flat'} (within {HWM_SPREAD:.0%})")
        ok &= flat
    print(f"goals, overlap >= {OVERLAP}, CPU <= {CPU_OVER}x, VmHWM < {MAX_HWM / 1e6:.0f} MB and flat:",
          "met" if ok else "NOT met")
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
