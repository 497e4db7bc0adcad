"""Transfer benchmark: a big master through ``fulfiller serve``, against a no-logic baseline.

For each source (local catalog, S3 on moto) and each size, one run is:

* baseline: the same bytes moved with no logic at all, a plain streaming GET
  piped to a PUT with a fixed Content-Length (not chunked): ``curl GET | curl PUT``,
  the GET from the same moto server for S3, of a ``file://`` URL for the local
  catalog; for the local catalog also ``curl -T file`` ("direct": no pipe, the
  fastest way any program sends a file), reported beside it;
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
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    MiB, WARMUP, Harness, arg_parser, children_cpu, free_port, human, make_master, mibps, run_bench, sha256_speed,
    wait_until,
)

LOAD_AT_START = os.getloadavg()
BUCKET = "bench-masters"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass
class Case:
    source: str
    size: int
    baseline_s: list[float] = field(default_factory=list)
    fulfiller_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)  # the upload step alone, from the job's attempts
    baseline_cpu: list[float] = field(default_factory=list)  # CPU seconds of the curl processes
    fulfiller_cpu: list[float] = field(default_factory=list)  # CPU seconds of the fulfiller process, all threads
    direct_s: list[float] = field(default_factory=list)  # local only: curl -T of the file, no pipe
    sha256_mibps: list[float] = field(default_factory=list)  # hashlib's SHA-256 on one core, right after the baseline
    hwm_warm: int = 0
    hwm: int = 0
    rss: int = 0


class Bench(Harness):
    sink_uvloop = True

    def __init__(self, args: argparse.Namespace, tmp: Path):
        env = {**os.environ, **AWS_ENV}
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.pop(key, None)
        super().__init__(args, tmp, env)
        self.masters = tmp / "masters"
        self.moto = ""
        self.s3: Any = None
        self.cpu: dict[str, float] = {}  # CPU seconds of the last baseline run
        self.current_source = ""

    # infrastructure

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
        for size in [WARMUP, *sizes]:  # the first is the warm-up master
            code = self.code(size)
            path = self.masters / code / "v2" / "en" / "9x16.mp4"
            print(f"generating {human(size)} master ...", flush=True)
            self.hashes[code] = make_master(path, size)
            if "s3" in sources:
                with open(path, "rb") as f:
                    self.s3.put_object(Bucket=BUCKET, Key=f"{code}/v2/en/9x16.mp4", Body=f)

    def catalog(self) -> dict[str, Any]:
        if self.current_source == "local":
            return {"type": "local", "root": str(self.masters)}
        return {"type": "s3", "bucket": BUCKET, "region": "us-east-1", "endpoint_url": self.moto}

    def callback_timeout(self, size: int) -> float:
        return 60 + size / (10 * MiB)

    # one plain copy

    def run_baseline(self, size: int, tag: str, direct: bool = False) -> float:
        """Seconds for curl GET | curl PUT of the master, or with ``direct`` (local only) curl -T of its file."""
        code = self.code(size)
        url = f"{self.sink}/upload/{tag}"
        if self.current_source == "local":
            path = self.masters / code / "v2" / "en" / "9x16.mp4"
            get = path.as_uri()
        else:
            get = self.s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                                       "Key": f"{code}/v2/en/9x16.mp4"})
        if direct:
            cmd = ["curl", "-sS", "-f", "--max-time", "600", "-o", os.devnull, "-H", "Expect:",
                   "-H", "Content-Type: video/mp4", "-T", str(path), url]
        else:
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
            self.log_path = self.tmp / f"fulfiller-{source}.log"
            for size in sizes:
                case = Case(source, size)
                with self.fresh_fulfiller(case, f"{source}-warmup") as (_, base):
                    for i in range(self.args.repeat):
                        tag = f"{source}-{human(size)}-{i}-{uuid.uuid4().hex[:6]}"
                        case.baseline_s.append(self.run_baseline(size, tag + "-base"))
                        case.baseline_cpu.append(self.cpu["baseline"])
                        if source == "local":
                            case.direct_s.append(self.run_baseline(size, tag + "-direct", direct=True))
                        case.sha256_mibps.append(sha256_speed())
                        e2e, up, cpu = self.run_fulfiller(base, size, tag)  # CPU from the POST to the callback
                        case.fulfiller_s.append(e2e)
                        case.upload_s.append(up)
                        case.fulfiller_cpu.append(cpu)
                        print(f"  {source:5} {human(size):>5} run {i + 1}: baseline {mbps(size, case.baseline_s[-1])}"
                              f"  fulfiller {mbps(size, e2e)} (upload step {mbps(size, up)})", flush=True)
                cases.append(case)
        return cases


def mbps(size: int, seconds: float) -> str:
    return f"{mibps(size, seconds):7.0f} MiB/s"


def report(cases: list[Case]) -> bool:
    print()
    print("median of each side's runs; throughput in MiB/s; CPU in seconds per GiB moved; RSS in MB (10^6 bytes)")
    print(f"{'source':6} {'size':>5} | {'baseline':>8} {'fulfiller':>9} {'ratio':>6} | {'upload':>7} {'ratio':>6} "
          f"| {'cpu base':>8} {'cpu fulf':>8} | {'VmHWM':>6} {'(warm)':>6} {'VmRSS':>6} | {'sha256':>6} {'ceil':>5} "
          f"| {'direct':>6} {'ratio':>5}")
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
              f"| {c.hwm / 1e6:6.1f} {c.hwm_warm / 1e6:6.1f} {c.rss / 1e6:6.1f} "
              f"| {statistics.median(c.sha256_mibps):6.0f} {statistics.median(c.sha256_mibps) / base:5.2f} "
              + (f"| {(direct := c.size / statistics.median(c.direct_s) / MiB):6.0f} {full / direct:5.2f}"
                 if c.direct_s else f"| {'-':>6} {'-':>5}"))
    print()
    print("baseline = curl GET | curl PUT (file:// for local); direct = curl -T of the file (local only),")
    print("  ratio = fulfiller / direct")
    print("fulfiller = end to end, event POST to callback received; upload = the job's upload step alone;")
    print("cpu base = the curl processes; cpu fulf = the whole fulfiller process (all threads)")
    print("(warm) = VmHWM after the 64 KiB warm-up job, before the measured runs")
    print("sha256 = hashlib's SHA-256 alone on one core (MiB/s); ceil = sha256 / baseline: the fulfiller hashes")
    print("  every byte for the callback's contentHash and the baseline does not, so its ratio cannot pass ceil")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (started at {LOAD_AT_START[0]:.1f})")
    print("goals: ratio >= 0.9, VmHWM < 150 MB and flat across sizes:", "met" if ok else "NOT met")
    return ok


def main() -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--sources", default="local,s3", type=lambda s: [x.strip() for x in s.split(",")])
    args = parser.parse_args()
    if bad := set(args.sources) - {"local", "s3"}:
        parser.error(f"unknown source(s) {sorted(bad)}; use local, s3")
    return run_bench(parser, args, Bench, "fulfiller-bench-", report)


if __name__ == "__main__":
    sys.exit(main())
