"""Intake benchmark: signed deliveries per second and ack latency, against a bare Starlette app.

Two servers, both run as ``fulfiller serve`` runs its app (uvicorn on uvloop
and httptools, no access log):

* fulfiller: ``fulfiller serve --no-worker`` whose ``state`` is ``--state``
  (default: a new SQLite file, which the store opens with WAL and
  ``synchronous=FULL``). A 202 means the event and its job are committed; the
  run ends by checking that the jobs stored grew by the 202s counted.
* baseline: a bare Starlette app that reads the body and answers 202.

Both take the same load: ``--concurrency`` senders, each a keep-alive connection
sending distinct Outpost-signed ``video.source_requested`` events. Closed loop
by default (a sender sends again once answered); with ``--rate`` the deliveries
are paced, and latency counts from when each was due, so a stalled server is
not hidden by the senders waiting on it. The two sides alternate in
``--rounds`` rounds so that other load on the machine falls on both alike; the
ratio is the median of the rounds' ratios.

    .venv/bin/python bench/intake.py                   # 10 s per side, in 3 rounds
    .venv/bin/python bench/intake.py --ids random      # uuid4 event ids, as a publisher sends
    .venv/bin/python bench/intake.py --only fulfiller --rate 500
    .venv/bin/python bench/intake.py --state postgresql://user:pass@host:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from uvloop import new_event_loop

from harness import SECRET, free_port, start_fulfiller, start_server, stop

PATH = "/webhooks/outpost"
WARMUP = 1000  # deliveries to each side off the clock: connections, imports, the database's first pages


def serve_bare(port: int) -> None:
    """The baseline: read the body, answer 202; under the same uvicorn settings as ``fulfiller serve``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def receive(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"status": "accepted"}, 202)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route(PATH, receive, methods=["POST"]), Route("/healthz", healthz)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)


# --- the senders ----------------------------------------------------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: :meth:`exchange` sends a request and resolves to the response's
    status once its head and its Content-Length bytes of body are in (None if the connection is lost).

    A Protocol, not asyncio streams nor a client library, which cost several times the CPU per delivery:
    the senders share the machine's cores with the server, so what they spend is taken from what is measured.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        length = int(head[at + 17:].split(b"\r\n", 1)[0]) if at >= 0 else 0
        if len(self.buffer) >= end + 4 + length:
            del self.buffer[:end + 4 + length]
            self.waiter.set_result(int(head[9:12]))
            self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None:
            self.waiter.set_result(None)

    def exchange(self, request: bytes) -> asyncio.Future[int | None]:
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport.is_closing():
            self.waiter.set_result(None)
        else:
            self.transport.write(request)
        return self.waiter


def deliveries(host: str, ids: str) -> Callable[[int], bytes]:
    """Delivery n as request bytes: an event whose id is also its creative code (so each has its own wait
    token too), signed as Outpost signs. Sequential ids (``run-n``) sort in the order they are sent."""
    from fulfiller.intake.signing import sign_outpost
    from fulfiller.ops.testevent import sample_event

    template = json.dumps(sample_event(
        "https://acct.r2.cloudflarestorage.com/masters/CODE?X-Amz-Signature=abc",
        "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_CODE/complete", code="CODE"))
    run = uuid.uuid4().hex[:8]

    def request(n: int) -> bytes:
        event_id = uuid.uuid4().hex if ids == "random" else f"{run}-{n}"
        body = template.replace("CODE", event_id).encode()
        return (f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nx-outpost-event-id: {event_id}\r\n"
                f"x-outpost-topic: video.source_requested\r\nx-outpost-signature: {sign_outpost(body, [SECRET])}"
                f"\r\n\r\n").encode() + body

    return request


@dataclass
class Round:
    side: str
    acks_s: float
    latencies_ms: list[float]  # sorted
    statuses: Counter[str]

    def p(self, q: float) -> float:
        """Nearest-rank percentile of the latencies."""
        ranks = self.latencies_ms
        return ranks[max(1, min(len(ranks), math.ceil(q / 100 * len(ranks)))) - 1] if ranks else math.nan

    def line(self) -> str:
        codes = " ".join(f"{code}x{n}" for code, n in sorted(self.statuses.items()))
        return (f"{self.side:<14} {self.acks_s:7.0f} acks/s  p50 {self.p(50):6.2f} ms  p99 {self.p(99):6.2f} ms  "
                f"max {self.p(100):7.2f} ms  [{codes}]")


async def send(side: str, url: str, args: argparse.Namespace, seconds: float = math.inf, count: float = math.inf,
               rate: float | None = None) -> Round:
    """Distinct deliveries from ``args.concurrency`` connections until ``seconds`` pass or ``count`` are sent.

    Paced (``rate``), delivery n is due at start + n / rate, and its latency counts from then.
    """
    host, port = url.removeprefix("http://").split(":")
    request = deliveries(f"{host}:{port}", args.ids)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    sent = 0
    start = time.perf_counter()

    async def sender() -> None:
        nonlocal sent
        transport, connection = await asyncio.get_running_loop().create_connection(Connection, host, int(port))
        try:
            while sent < count:
                n, sent = sent, sent + 1
                due = start + n / rate if rate else time.perf_counter()
                if due - start >= seconds:
                    return
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
                status = await connection.exchange(request(n))
                if status is None:
                    statuses["lost"] += 1
                    return
                latencies.append((time.perf_counter() - due) * 1000)
                statuses[str(status)] += 1
        finally:
            transport.close()

    await asyncio.gather(*(sender() for _ in range(args.concurrency)))
    return Round(side, statuses["202"] / (time.perf_counter() - start), sorted(latencies), statuses)


# --- the run --------------------------------------------------------------------------------------


def jobs_stored(url: str) -> int:
    """The store's job count, from the fulfiller's /metrics (jobs by status)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return sum(int(float(line.split()[-1])) for line in lines if line.startswith("fulfiller_jobs{"))


def start(side: str, workdir: Path, state: str) -> tuple[subprocess.Popen[bytes], str]:
    """One side's server, healthy; its base URL."""
    if side == "fulfiller":
        config = {"state": state, "catalogs": {"local": {"type": "local", "root": str(workdir)}},
                  "routes": [{"catalog": "local"}]}
        return start_fulfiller(workdir, config, worker=False)
    port = free_port()
    cmd = [sys.executable, __file__, "--serve-bare", str(port)]
    return start_server(cmd, port, workdir / "bare.log"), f"http://127.0.0.1:{port}"


def report(runs: dict[str, list[Round]]) -> None:
    print("median round:")
    for rounds in runs.values():
        print("  " + sorted(rounds, key=lambda r: r.acks_s)[len(rounds) // 2].line())
    if len(runs) == 2:
        ratios = [f.acks_s / b.acks_s for f, b in zip(runs["fulfiller"], runs["bare"])]
        each = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"ratio fulfiller/bare: {statistics.median(ratios):.2f} (rounds: {each})")
        # A closed loop's tail follows the machine's hiccups as much as the server's: the baseline's shows them.
        for side, rounds in runs.items():
            print(f"p99 per round, {side}: {', '.join(f'{r.p(99):.1f}' for r in rounds)} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", help="the fulfiller's state URL (default: a new SQLite file)")
    parser.add_argument("--seconds", type=float, default=10, help="measure each side this long in all (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternate the sides this many times (default 3)")
    parser.add_argument("--concurrency", type=int, default=64, help="senders, one connection each (default 64)")
    parser.add_argument("--rate", type=float, help="pace the deliveries at this many per second in all "
                                                   "(default: closed loop)")
    parser.add_argument("--ids", choices=["sequential", "random"], default="sequential",
                        help="event ids: sequential in the order sent (default), or uuid4 as a publisher sends")
    parser.add_argument("--only", choices=["fulfiller", "bare"], help="measure one side only")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    state = args.state or f"sqlite:///{workdir / 'bench.db'}"
    sides = [args.only] if args.only else ["fulfiller", "bare"]
    pacing = f"paced at {args.rate:g}/s" if args.rate else "closed loop"
    print(f"{args.concurrency} senders, {pacing}, {args.ids} event ids; {args.seconds:g} s per side in "
          f"{args.rounds} alternating round(s) after {WARMUP} warm-up deliveries; state {state.split(':')[0]}")
    runs: dict[str, list[Round]] = {side: [] for side in sides}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for side in sides:
            servers[side] = start(side, workdir, state)
        url = {side: base for side, (_, base) in servers.items()}
        before = jobs_stored(url["fulfiller"]) if "fulfiller" in url else 0
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            warm = {side: runner.run(send(side, url[side], args, count=WARMUP)) for side in sides}
            for i in range(args.rounds):
                for side in sides:
                    result = runner.run(send(side, url[side], args, args.seconds / args.rounds, rate=args.rate))
                    runs[side].append(result)
                    print(f"round {i + 1}: {result.line()}", flush=True)
        if "fulfiller" in url:
            stored = jobs_stored(url["fulfiller"]) - before
            acked = sum(r.statuses["202"] for r in [warm["fulfiller"], *runs["fulfiller"]])
            print(f"jobs stored: {stored} for {acked} acks{'' if stored == acked else '  <-- MISMATCH'}")
    finally:
        for proc, _ in servers.values():
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
