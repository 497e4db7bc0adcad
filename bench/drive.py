"""Drive benchmark: a big master from the Drive v3 double through ``fulfiller serve``, against a plain copy.

For each size, one run is:

* baselines: the same bytes with no logic at all, GET from the double's
  ``alt=media`` URL (with a bearer token) into a PUT to the sink with a fixed
  Content-Length: ``curl | curl``, and the same copy in Python with urllib3 (one
  streaming GET fed to one streaming PUT, no hashing: the fulfiller's own HTTP
  stack without the fulfiller, the machine's limit); SHA-256 alone over the
  master's bytes (``baselines.py``);
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
import sys
import threading
import time
from pathlib import Path
from typing import Any

from baselines import curl_pipe

from harness import Copy, TransferBench, arg_parser, run

BASELINE_TOKEN = "ya29.bench-baseline"
AUTH = f"Authorization: Bearer {BASELINE_TOKEN}"  # what the baselines' GETs carry
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
        self.accounted["drive double"] = self.procs[-1].pid

    def catalog(self, source: str) -> dict[str, Any]:
        return {"type": "drive", "root_folder_id": self.drive["root"], "credentials_file": self.drive["key_file"],
                "api_endpoint": self.drive["api_endpoint"]}

    def media_url(self, size: int) -> str:
        file_id = self.drive["files"][self.code(size)]
        return f"{self.drive['api_endpoint']}files/{file_id}?alt=media&supportsAllDrives=true"

    def origin(self, source: str, size: int) -> tuple[str, list[str]]:
        return self.media_url(size), [AUTH]

    def baselines(self, source: str) -> dict[str, Copy]:
        return {"curl | curl": lambda size, put: curl_pipe(self.media_url(size), size, put, [AUTH])}


def main() -> int:
    if sys.argv[1:2] == ["--serve-drive"]:
        serve_drive(sys.argv[2])
        return 0
    return run(Bench, arg_parser(__doc__).parse_args())


if __name__ == "__main__":
    sys.exit(main())
