"""Drive benchmark: a big master from the Drive v3 double through ``fulfiller serve``, against a plain copy.

For each size, one run is:

* baselines: the same bytes with no logic at all, GET from the double's
  ``alt=media`` URL (with a bearer token) into a PUT to the sink with a fixed
  Content-Length: ``curl | curl``, and the same copy in Python with urllib3 (one
  streaming GET fed to one streaming PUT, no hashing: the fulfiller's own HTTP
  stack without the fulfiller);
* fulfiller: a signed ``video.source_requested`` event POSTed to a fresh
  ``fulfiller serve`` process whose only catalog is ``type: drive`` on the
  double, timed until its completion callback reaches the sink (end to end:
  receive, store, claim, token grant, folder walk, one GET whose first chunk
  is sniffed, stream + SHA-256 checked against Drive's sha256Checksum, callback).

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
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    WARMUP, Harness, arg_parser, children_cpu, human, make_master, mibps, process_cpu, run_bench, sha256_speed,
)

BASELINE_TOKEN = "ya29.bench-baseline"
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


# --- the Python baseline, in its own process -------------------------------------------------


def plain_copy(get_url: str, put_url: str, size: int) -> None:
    """One streaming GET into one streaming PUT with urllib3 in 1 MiB reads: the fulfiller's own
    HTTP stack with none of its logic (no hashing, no queueing between threads).

    Prints the copy's own seconds and CPU seconds (interpreter start-up and imports left out) as JSON.
    """
    import urllib3

    cpu, started = time.process_time(), time.perf_counter()
    pool = urllib3.PoolManager()
    auth = {"Authorization": f"Bearer {BASELINE_TOKEN}", "Accept-Encoding": "identity"}
    source = pool.request("GET", get_url, headers=auth, preload_content=False, decode_content=False)
    assert source.status == 200, source.status

    def body() -> Any:
        while chunk := source.read(1 << 20, decode_content=False):
            yield chunk

    headers = {"Content-Type": "video/mp4", "Content-Length": str(size)}
    response = pool.request("PUT", put_url, body=body(), headers=headers, chunked=False)
    assert response.status < 300, response.status
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu}))


# --- the benchmark ----------------------------------------------------------------------------


@dataclass
class Case:
    size: int
    curl_s: list[float] = field(default_factory=list)
    py_s: list[float] = field(default_factory=list)
    fulfiller_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)  # the job's upload step alone, from its attempts
    curl_cpu: list[float] = field(default_factory=list)
    py_cpu: list[float] = field(default_factory=list)
    fulfiller_cpu: list[float] = field(default_factory=list)
    sha256_mibps: list[float] = field(default_factory=list)  # hashlib's SHA-256 on one core, after the baselines
    hwm_warm: int = 0
    hwm: int = 0
    rss: int = 0


class Bench(Harness):
    code_prefix = "DRV"
    catalog_name = "drive"

    def __init__(self, args: argparse.Namespace, tmp: Path):
        super().__init__(args, tmp)
        self.drive: dict[str, Any] = {}

    # infrastructure

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

    def catalog(self) -> dict[str, Any]:
        return {"type": "drive", "root_folder_id": self.drive["root"], "credentials_file": self.drive["key_file"],
                "api_endpoint": self.drive["api_endpoint"]}

    # one plain copy

    def run_baseline(self, how: str, size: int, tag: str) -> tuple[float, float]:
        """Seconds and CPU seconds of one plain copy, ``how`` being curl or python."""
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

    # the whole thing

    def run(self) -> list[Case]:
        sizes = self.args.sizes
        self.start_sink()
        self.start_drive(sizes)
        cases = []
        for size in sizes:
            case = Case(size)
            with self.fresh_fulfiller(case, "warmup") as (proc, base):
                for i in range(self.args.repeat):
                    tag = f"{human(size)}-{i}-{uuid.uuid4().hex[:6]}"
                    seconds, cpu = self.run_baseline("curl", size, tag + "-curl")
                    case.curl_s.append(seconds)
                    case.curl_cpu.append(cpu)
                    seconds, cpu = self.run_baseline("python", size, tag + "-py")
                    case.py_s.append(seconds)
                    case.py_cpu.append(cpu)
                    case.sha256_mibps.append(sha256_speed())
                    cpu = process_cpu(proc.pid)  # the whole run, the admin API's job lookups included
                    e2e, up, _ = self.run_fulfiller(base, size, tag)
                    case.fulfiller_cpu.append(process_cpu(proc.pid) - cpu)
                    case.fulfiller_s.append(e2e)
                    case.upload_s.append(up)
                    print(f"  {human(size):>5} run {i + 1}: curl {mibps(size, case.curl_s[-1]):6.0f}"
                          f"  python {mibps(size, case.py_s[-1]):6.0f}"
                          f"  fulfiller {mibps(size, e2e):6.0f} (upload step {mibps(size, up):6.0f}) MiB/s",
                          flush=True)
            cases.append(case)
        return cases


def report(cases: list[Case], chunk_bytes: int) -> bool:
    print()
    print(f"Drive double -> sink, worker.chunk_bytes={chunk_bytes}, median of each side's runs")
    print("throughput in MiB/s; CPU in seconds per GiB moved; RSS in MB (10^6 bytes)")
    print(f"{'size':>5} | {'curl':>5} {'py':>5} {'fulf.':>5} {'upload':>6} | {'ratio/curl':>10} {'ratio/py':>8} "
          f"| {'cpu curl':>8} {'py':>5} {'fulf.':>5} | {'VmHWM':>6} {'(warm)':>6} {'VmRSS':>6} | {'sha256':>6}")
    ok = True
    for c in cases:
        curl, plain = mibps(c.size, statistics.median(c.curl_s)), mibps(c.size, statistics.median(c.py_s))
        full, up = mibps(c.size, statistics.median(c.fulfiller_s)), mibps(c.size, statistics.median(c.upload_s))
        per_gib = (1 << 30) / c.size
        cpu = [statistics.median(x) * per_gib for x in (c.curl_cpu, c.py_cpu, c.fulfiller_cpu)]
        ok &= full / curl >= 0.9 and c.hwm < 150e6
        print(f"{human(c.size):>5} | {curl:5.0f} {plain:5.0f} {full:5.0f} {up:6.0f} | {full / curl:10.2f} "
              f"{full / plain:8.2f} | {cpu[0]:8.2f} {cpu[1]:5.2f} {cpu[2]:5.2f} "
              f"| {c.hwm / 1e6:6.1f} {c.hwm_warm / 1e6:6.1f} {c.rss / 1e6:6.1f} "
              f"| {statistics.median(c.sha256_mibps):6.0f}")
    print()
    print("curl = curl GET (bearer token) | curl PUT; py = one streaming GET fed to one PUT, in Python (urllib3);")
    print("fulf. = the fulfiller end to end, event POST to callback received; upload = its upload step alone")
    print("(Drive GET, SHA-256 checked against Drive's sha256Checksum, PUT); ratios are of the end-to-end figure")
    print("sha256 = hashlib's SHA-256 alone on one core (MiB/s): the fulfiller hashes every byte, the baselines")
    print("  do not, so it cannot pass that speed")
    print("goals: ratio/curl >= 0.9, VmHWM < 150 MB and flat across sizes:", "met" if ok else "NOT met")
    return ok


def main() -> int:
    if sys.argv[1:2] == ["--plain-copy"]:
        plain_copy(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if sys.argv[1:2] == ["--serve-drive"]:
        serve_drive(sys.argv[2])
        return 0
    parser = arg_parser(__doc__)
    args = parser.parse_args()
    return run_bench(parser, args, Bench, "fulfiller-drive-bench-", lambda cases: report(cases, args.chunk_bytes))


if __name__ == "__main__":
    sys.exit(main())
