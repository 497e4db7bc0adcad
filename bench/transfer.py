"""Transfer benchmark: a big master from a local or S3 catalog through ``fulfiller serve``, against plain copies.

For each source (local catalog, S3 on a moto server) and each size, a fresh
``fulfiller serve`` moves a small warm-up master, then ``--repeat`` times:

* baselines, the same bytes with no logic: ``curl GET | curl PUT`` with a fixed
  Content-Length (the GET of a ``file://`` URL for the local catalog, from the
  same moto server for S3); for the local catalog also ``curl -T file``, the
  fastest way any program sends a file; the Python copy (the file read, or the
  same GET, fed to a urllib3 PUT, no hashing: the machine's limit for a
  transfer in Python) and SHA-256 alone over the master's bytes
  (``baselines.py``);
* fulfiller: one signed ``video.source_requested`` event, timed from its POST to
  its completion callback (receive, store, claim, resolve, sniff, stream +
  SHA-256, callback).

Uploads and callbacks go to the sink from ``harness.py``, in its own process.
Peak RSS is the fulfiller's VmHWM after its jobs; CPU per GiB is the fulfiller
process's (all threads) and the curl processes'.

    .venv/bin/python bench/transfer.py --sizes 100M,1G --sources local s3

Needs Linux (/proc), curl, and the project's test extras (moto[server]) for S3.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from baselines import curl_pipe, timed

from harness import Copy, TransferBench, arg_parser, free_port, run, start_server

BUCKET = "bench-masters"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
AWS_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")  # a developer's own


class Bench(TransferBench):
    def __init__(self, args: argparse.Namespace, tmp: Path):
        super().__init__(args, tmp)
        self.sources = args.sources
        self.env = {k: v for k, v in os.environ.items() if k not in AWS_UNSET} | AWS_ENV
        self.moto = ""
        self.s3: Any = None

    def start(self) -> None:
        """For S3: a moto server in its own process, with each master put in the bucket."""
        if "s3" not in self.sources:
            return
        port = free_port()
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.procs.append(start_server([*cmd, "-H", "127.0.0.1", "-p", str(port)], port, self.tmp / "moto.log",
                                       self.env, health="/moto-api/"))
        self.accounted["moto"] = self.procs[-1].pid
        self.moto = f"http://127.0.0.1:{port}"
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.moto, region_name="us-east-1", aws_access_key_id="testing",
                               aws_secret_access_key="testing")
        self.s3.create_bucket(Bucket=BUCKET)
        for size in self.hashes:
            self.s3.upload_file(str(self.master(size)), BUCKET, self.key(size))

    def key(self, size: int) -> str:
        return f"{self.code(size)}/v2/en/9x16.mp4"

    def s3_get(self, size: int) -> str:
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": self.key(size)})

    def catalog(self, source: str) -> dict[str, Any]:
        if source == "local":
            return {"type": "local", "root": str(self.tmp / "masters")}
        return {"type": "s3", "bucket": BUCKET, "region": "us-east-1", "endpoint_url": self.moto}

    def origin(self, source: str, size: int) -> tuple[str, list[str]]:
        return (self.s3_get(size) if source == "s3" else str(self.master(size))), []

    def baselines(self, source: str) -> dict[str, Copy]:
        if source == "s3":
            return {"curl | curl": lambda size, put: curl_pipe(self.s3_get(size), size, put)}

        def direct(size: int, put: str) -> tuple[float, float]:
            return timed(["curl", "-sSf", "-o", os.devnull, "-H", "Expect:", "-H", "Content-Type: video/mp4",
                          "-T", str(self.master(size)), put])

        return {"curl | curl": lambda size, put: curl_pipe(self.master(size).as_uri(), size, put),
                "curl -T": direct}


def main() -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--sources", nargs="+", choices=["local", "s3"], default=["local", "s3"])
    return run(Bench, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
