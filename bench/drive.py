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
(``add_file(..., path=...)``), so a gigabyte never sits in its memory. Uploads
and callbacks go to the sink from ``harness.py``, in its own process. CPU
seconds per GiB (of the fulfiller process, or of the baseline's processes) hold
steadier than throughput on a busy machine. Peak RSS is the fulfiller's VmHWM
after its jobs; each size gets a fresh fulfiller (after one small warm-up job)
so its VmHWM belongs to that size alone.

    .venv/bin/python bench/drive.py --sizes 100M,1G

Needs Linux (/proc) and curl; imports the Drive double from tests/support.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from harness import Copy, TransferBench, arg_parser, curl_pipe, run

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


class Bench(TransferBench):
    sources = ["drive"]

    def __init__(self, args: argparse.Namespace, tmp: Path):
        super().__init__(args, tmp)
        self.drive: dict[str, Any] = {}

    def start(self) -> None:
        spec = self.tmp / "drive-spec.json"
        masters = {self.code(size): str(self.master(size)) for size in self.hashes}
        spec.write_text(json.dumps({"workdir": str(self.tmp), "masters": masters}))
        print("starting the Drive double (it hashes each master once) ...", flush=True)
        self.drive = json.loads(self.helper([sys.executable, __file__, "--serve-drive", str(spec)]))

    def catalog(self, source: str) -> dict[str, Any]:
        return {"type": "drive", "root_folder_id": self.drive["root"], "credentials_file": self.drive["key_file"],
                "api_endpoint": self.drive["api_endpoint"]}

    def media_url(self, size: int) -> str:
        file_id = self.drive["files"][self.code(size)]
        return f"{self.drive['api_endpoint']}files/{file_id}?alt=media&supportsAllDrives=true"

    def baselines(self, source: str) -> dict[str, Copy]:
        def python(size: int, put: str) -> tuple[float, float]:
            out = subprocess.run([sys.executable, __file__, "--plain-copy", self.media_url(size), put, str(size)],
                                 check=True, stdout=subprocess.PIPE).stdout
            timed = json.loads(out)
            return timed["seconds"], timed["cpu"]

        auth = [f"Authorization: Bearer {BASELINE_TOKEN}"]
        return {"curl | curl": lambda size, put: curl_pipe(self.media_url(size), size, put, auth), "urllib3": python}


def main() -> int:
    if sys.argv[1:2] == ["--plain-copy"]:
        plain_copy(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if sys.argv[1:2] == ["--serve-drive"]:
        serve_drive(sys.argv[2])
        return 0
    return run(Bench, arg_parser(__doc__).parse_args())


if __name__ == "__main__":
    sys.exit(main())
