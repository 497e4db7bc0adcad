"""The plain copies the transfer benchmarks set the fulfiller against, each measured in its own processes.

* ``curl GET | curl PUT``: the same bytes with no logic, as a shell pipeline;
* the Python copy: one streaming read (a file, or a urllib3 GET) fed to one
  streaming urllib3 PUT in 1 MiB chunks, no hashing: the fulfiller's own
  language and HTTP stack with none of its logic, the most a transfer in Python
  can do on this machine ("the machine's limit");
* SHA-256 alone: the master's bytes read from the page cache into one buffer and
  hashed, on one core: the least time any transfer that hashes every byte needs.

The fulfiller runs reading, hashing and sending at once, so its time is set
against the larger of the last two, and its CPU against their sum.

    python bench/baselines.py --copy SOURCE PUT_URL SIZE [HEADER ...]
    python bench/baselines.py --sha256 PATH

each print their own seconds and CPU seconds (interpreter start-up and imports
left out) as one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import urllib3

MiB = 1 << 20


def timed(cmd: list[str]) -> tuple[float, float]:
    """Seconds and CPU seconds (of its processes) of running ``cmd``."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime


def curl_pipe(get_url: str, size: int, put_url: str, get_headers: Sequence[str] = ()) -> tuple[float, float]:
    """``curl GET | curl PUT``: the same bytes with no logic. The PUT states the length, as the
    fulfiller's does (``curl -T -`` alone would send chunked); if the GET fails, the PUT gives up
    waiting for the rest of its body after ``--max-time``."""
    get = ["curl", "-sSf", "--max-time", "600", *(arg for header in get_headers for arg in ("-H", header)), get_url]
    put = ["curl", "-sSf", "--max-time", "600", "-o", os.devnull, "-T", "-", "-H", "Transfer-Encoding:",
           "-H", "Expect:", "-H", f"Content-Length: {size}", "-H", "Content-Type: video/mp4", put_url]
    return timed(["bash", "-o", "pipefail", "-c", f"{shlex.join(get)} | {shlex.join(put)}"])


def _measured(args: list[str]) -> tuple[float, float]:
    """Run this script with ``args`` in a fresh interpreter: the seconds and CPU seconds it reports."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE).stdout
    figures = json.loads(out)
    return figures["seconds"], figures["cpu"]


def python_copy(source: str, size: int, put_url: str, get_headers: Sequence[str] = ()) -> tuple[float, float]:
    """The no-hash Python copy of ``source`` (a file path or a URL) to ``put_url``."""
    return _measured(["--copy", source, put_url, str(size), *get_headers])


def sha256_alone(path: str) -> tuple[float, float]:
    """SHA-256 of the file at ``path``, on one core."""
    return _measured(["--sha256", path])


def _copy(source: str, put_url: str, size: int, headers: list[str]) -> None:
    pool = urllib3.PoolManager()

    def body() -> Iterator[bytes]:
        if not source.startswith(("http://", "https://")):
            with open(source, "rb") as f:
                while chunk := f.read(MiB):
                    yield chunk
            return
        get = dict(header.split(": ", 1) for header in headers) | {"Accept-Encoding": "identity"}
        response = pool.request("GET", source, headers=get, preload_content=False, decode_content=False)
        assert response.status == 200, response.status
        while chunk := response.read(MiB, decode_content=False):
            yield chunk

    put = pool.request("PUT", put_url, body=body(), headers={"Content-Type": "video/mp4", "Content-Length": str(size)},
                       chunked=False)
    assert put.status < 300, put.status


def _sha256(path: str) -> None:
    buffer = memoryview(bytearray(MiB))
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            sha.update(buffer[:n])


def main() -> None:
    cpu, started = time.process_time(), time.perf_counter()
    if sys.argv[1] == "--copy":
        _copy(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:])
    elif sys.argv[1] == "--sha256":
        _sha256(sys.argv[2])
    else:
        sys.exit(__doc__)
    print(json.dumps({"seconds": time.perf_counter() - started, "cpu": time.process_time() - cpu}))


if __name__ == "__main__":
    main()
