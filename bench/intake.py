"""Intake benchmark: signed deliveries per second and ack latency, against a do-nothing baseline.

Two servers in the same run, with the same uvicorn settings as ``fulfiller serve``
(``uvicorn.run(app, host, port, log_config=None, access_log=False)``, whose "auto" loop
and HTTP parser are uvloop and httptools when installed, as ``uvicorn[standard]`` does;
the run's first line says which):

* fulfiller: ``fulfiller serve --no-worker`` on a fresh config whose ``state`` is
  ``--state`` (default: a new SQLite file, which the store opens with WAL and
  ``synchronous=FULL``): every 202 means the event and its job were committed,
  and the run ends by checking that the jobs stored match the 202s counted;
* baseline: a bare Starlette app that reads the body and answers 202.

Both get the same load: ``--concurrency`` senders (64), every delivery a distinct,
Outpost-signed ``video.source_requested`` event. Closed loop by default (each
sender sends its next delivery when the previous one is answered, so by Little's
law the mean latency is concurrency / throughput); with ``--rate`` the deliveries
are paced and latency counts from when each was due (no coordinated omission).
The two sides alternate in ``--rounds`` short rounds so that other load on the
machine falls on both alike; the ratio is the median of the per-round ratios.

Senders: ``--client raw`` (default) is a minimal HTTP/1.1 keep-alive client with
one socket per sender (an asyncio Protocol on uvloop: the senders share the
machine's cores with the server, and this costs half the CPU per delivery that
asyncio streams did); ``--client httpx`` is one ``httpx.AsyncClient`` with a pool
of ``--concurrency`` connections. httpx costs ~20x the CPU per request (its pool
scans every connection on each request, and without the ``sniffio`` package
installed httpcore retries a failing import on every request), so with it the
senders, not the servers, are what is measured; ``--senders N`` spreads them over
N processes. Each run prints the CPU each side spent per delivery (the server's
split into its event loop's thread, its other threads, and its child processes:
with SQLite, the ingest process that parses and commits the deliveries), how long
the server's event loop and child processes were ready to run but waited for a core
(their run-queue time, from ``/proc/<pid>/schedstat``), and names the bottleneck:
on a small machine the senders and the server share the cores.

    .venv/bin/python bench/intake.py                       # 10 s per side, 64 raw senders
    .venv/bin/python bench/intake.py --client httpx --senders 4
    .venv/bin/python bench/intake.py --rate 1000           # latency at a steady 1000/s
    .venv/bin/python bench/intake.py --ids random          # uuid4 event ids, as a publisher sends
    .venv/bin/python bench/intake.py --state postgresql://user:pass@host:5432/db --requests 30000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET = "whsec_bench-intake-secret"
PATH = "/webhooks/outpost"
GOAL_RATIO = 0.5
GOAL_P99_MS = 25.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- servers --------------------------------------------------------------------------------------


def bare_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def receive(request: Request) -> Response:
        await request.body()
        return JSONResponse({"status": "accepted"}, 202)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route(PATH, receive, methods=["POST"]), Route("/healthz", healthz)])


def run_bare(host: str, port: int) -> None:
    """The baseline, run exactly as ``fulfiller serve`` runs its app."""
    import uvicorn

    uvicorn.run(bare_app(), host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=35)


def server_stack() -> str:
    """The event loop and HTTP parser uvicorn's "auto" settings pick, for both servers alike."""
    from importlib.util import find_spec

    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    return f"{loop} + {http}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fulfiller_command() -> list[str]:
    script = shutil.which("fulfiller", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "fulfiller.cli"]


class Server:
    def __init__(self, name: str, args: list[str], port: int, log: Path):
        self.name, self.port = name, port
        self.log_file = open(log, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        self._wait_healthy()

    def _wait_healthy(self, timeout_s: float = 30) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not become healthy")

    def cpu_s(self) -> tuple[float, float, float]:
        """User + system CPU seconds used so far, from /proc: the event loop's thread, the server's other
        threads, and its child processes (the SQLite ingest process) while they run."""
        main = other = 0.0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            used = _cpu_s(task / "stat")
            if task.name == str(self.proc.pid):
                main += used
            else:
                other += used
        children = sum(_cpu_s(Path(f"/proc/{pid}/stat")) for pid in _children(self.proc.pid))
        return main, other, children

    def queued_s(self) -> tuple[float, float]:
        """Seconds spent ready to run but waiting for a core, so far: the event loop's thread, and the main
        threads of the child processes. A stage that waits for a core is slowed by the others' CPU, not by
        its own work or its I/O."""
        loop = _queued_s(Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/schedstat"))
        children = sum(_queued_s(Path(f"/proc/{pid}/schedstat")) for pid in _children(self.proc.pid))
        return loop, children

    def stop(self) -> None:
        if self.log_file.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def _cpu_s(stat: Path) -> float:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a thread or process that just ended
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _queued_s(schedstat: Path) -> float:
    """Run-queue wait from ``schedstat`` (on the CPU, waiting for it, timeslices; nanoseconds); 0 without it."""
    try:
        return int(schedstat.read_text().split()[1]) / 1e9
    except (FileNotFoundError, IndexError, ValueError):  # ended, or a kernel without scheduler statistics
        return 0.0


def _children(pid: int) -> list[str]:
    found: list[str] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += (task / "children").read_text().split()
        except FileNotFoundError:
            pass
    return found


def start_fulfiller(workdir: Path, state: str) -> Server:
    port = free_port()
    (workdir / "masters").mkdir(exist_ok=True)
    config = {
        "state": state,
        "receiver": {"secrets": [SECRET]},
        "catalogs": {"local": {"type": "local", "root": str(workdir / "masters")}},
        "routes": [{"catalog": "local"}],
    }
    path = workdir / "fulfiller.yaml"
    path.write_text(json.dumps(config))
    args = [*fulfiller_command(), "serve", "--no-worker", "--config", str(path), "--host", "127.0.0.1",
            "--port", str(port)]
    return Server("fulfiller serve --no-worker", args, port, workdir / "fulfiller.log")


def start_bare(workdir: Path) -> Server:
    port = free_port()
    args = [sys.executable, os.path.abspath(__file__), "--serve-bare", str(port)]
    return Server("bare Starlette", args, port, workdir / "bare.log")


# --- senders --------------------------------------------------------------------------------------

BODY_TEMPLATE = json.dumps({
    "projectId": "019d928c-02e1-7000-8000-000000000001",
    "projectSlug": "hearty",
    "creative": {"code": "BENCH-CODE", "variation": 2, "locale": "en", "aspectRatio": "9x16", "kind": "video"},
    "facebook": {"facebookMediaIds": ["fm_a"], "ads": [], "adsets": [], "campaigns": []},
    "fulfillment": {
        "uploadUrl": "https://acct.r2.cloudflarestorage.com/masters/BENCH-CODE?X-Amz-Signature=abc",
        "storageKey": "fb-external/019d928c/BENCH-CODE/v2/en/9x16.video",
        # Within the 24 hours a request may look ahead; one wait token per delivery (a repeated one is a duplicate).
        "expiresAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
        "completeCallbackUrl": "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_BENCH-CODE/complete",
    },
})


def signed_delivery(event_id: str) -> tuple[bytes, dict[str, str]]:
    """A distinct event, signed as Outpost signs (``v0=hex(HMAC-SHA256(secret, body))``)."""
    body = BODY_TEMPLATE.replace("BENCH-CODE", event_id).encode()
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "content-type": "application/json",
        "x-outpost-event-id": event_id,
        "x-outpost-topic": "video.source_requested",
        "x-outpost-signature": f"v0={sig}",
    }


@dataclass
class Load:
    url: str
    connections: int
    seconds: float | None  # how long to send, from the start signal, or
    requests: int | None  # how many to send (this process's share)
    run_id: str
    client: str = "httpx"
    rate: float | None = None  # paced: deliveries per second from this process (None: closed loop)
    random_ids: bool = False  # uuid4 event ids, as a publisher's are; else ``run_id-n``, which sort in order

    def event_id(self, n: int) -> str:
        return uuid.uuid4().hex if self.random_ids else f"{self.run_id}-{n}"


class Schedule:
    """Which delivery is next and from when its latency counts.

    Closed loop (no rate): each sender sends again as soon as it is answered.
    Paced: delivery n is due at start + n/rate; latency counts from when it was
    due, not from when a sender got round to it, so a stalled server is not
    hidden by the senders slowing down (no coordinated omission).
    """

    def __init__(self, load: Load):
        self.load = load
        self.sent = 0
        self.start = time.perf_counter()
        self.deadline = None if load.seconds is None else self.start + load.seconds

    async def next(self) -> tuple[int, float] | None:
        if self.load.requests is not None and self.sent >= self.load.requests:
            return None
        n = self.sent
        self.sent += 1
        if self.load.rate:
            due = self.start + n / self.load.rate
            if self.deadline is not None and due >= self.deadline:
                return None
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            return n, due
        now = time.perf_counter()
        if self.deadline is not None and now >= self.deadline:
            return None
        return n, now


async def _send(load: Load) -> dict[str, Any]:
    return await (_send_raw(load) if load.client == "raw" else _send_httpx(load))


class _Exchange(asyncio.Protocol):
    """One keep-alive connection of the raw client: sends a request, and resolves when its whole response
    (status line, headers, Content-Length bytes of body) has arrived. A Protocol, not asyncio streams:
    each ``readline`` of a stream is a coroutine step, and at these rates the senders share the
    server's cores, so every microsecond they spend is taken from what is measured."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).lower() + b"\r\n"
        at = head.find(b"\r\ncontent-length:")
        length = int(head[at + 17:head.index(b"\r\n", at + 17)]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def exchange(self, request: bytes) -> asyncio.Future[int | None]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport.is_closing():
            self.waiter.set_result(None)
        else:
            self.transport.write(request)
        return self.waiter


async def _send_raw(load: Load) -> dict[str, Any]:
    """The same load from a minimal HTTP/1.1 keep-alive client: one socket per sender, no pool, no parsing
    beyond the status line and Content-Length. It costs a fraction of httpx's CPU, so it shows what the
    server can do when the client is not the limit."""
    host, port = load.url.removeprefix("http://").split(":")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    schedule = Schedule(load)
    loop = asyncio.get_running_loop()

    async def sender() -> None:
        nonlocal errors
        transport, conn = await loop.create_connection(_Exchange, host, int(port))
        try:
            while (slot := await schedule.next()) is not None:
                n, started = slot
                body, headers = signed_delivery(load.event_id(n))
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                request = (f"POST {PATH} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {len(body)}\r\n"
                           f"{head}\r\n").encode() + body
                code = await conn.exchange(request)
                if code is None:
                    errors += 1
                    return
                latencies.append(time.perf_counter() - started)
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            transport.close()

    cpu0, wall0 = time.process_time(), schedule.start
    await asyncio.gather(*(sender() for _ in range(load.connections)))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "cpu_s": cpu1 - cpu0,
            "wall_s": wall1 - wall0}


async def _send_httpx(load: Load) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=load.connections, max_keepalive_connections=load.connections)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    schedule = Schedule(load)

    async with httpx.AsyncClient(base_url=load.url, limits=limits, timeout=30) as client:

        async def sender() -> None:
            nonlocal errors
            while (slot := await schedule.next()) is not None:
                n, started = slot
                body, headers = signed_delivery(load.event_id(n))
                try:
                    response = await client.post(PATH, content=body, headers=headers)
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        cpu0, wall0 = time.process_time(), schedule.start
        await asyncio.gather(*(sender() for _ in range(load.connections)))
        cpu1, wall1 = time.process_time(), time.perf_counter()
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "cpu_s": cpu1 - cpu0,
            "wall_s": wall1 - wall0}


def _sender_process(load: Load, ready: Any, go: Any, out: Any) -> None:
    import httpx  # noqa: F401  (imported before the start signal, not on the clock)

    ready.put(os.getpid())
    go.wait()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        out.put(runner.run(_send(load)))


def _loop_factory() -> Any:
    """uvloop when installed (``uvicorn[standard]`` brings it), as the servers run: the cheaper the
    senders, the more of the machine's cores the servers get."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def drive(url: str, *, concurrency: int, senders: int, seconds: float | None, requests: int | None,
          tag: str, client: str = "httpx", rate: float | None = None, random_ids: bool = False) -> dict[str, Any]:
    """Run the load from ``senders`` processes started together; merge what they measured."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    shares = [concurrency // senders + (1 if i < concurrency % senders else 0) for i in range(senders)]
    procs = []
    for i, conns in enumerate(shares):
        share = None if requests is None else requests * conns // concurrency
        load = Load(url, conns, seconds, share, f"{tag}-{i}-{uuid.uuid4().hex[:8]}", client,
                    None if rate is None else rate * conns / concurrency, random_ids)
        procs.append(ctx.Process(target=_sender_process, args=(load, ready, go, out), daemon=True))
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    merged: dict[str, Any] = {"latencies": [], "statuses": {}, "errors": 0, "cpu_s": 0.0, "wall_s": 0.0}
    for r in results:
        merged["latencies"] += r["latencies"]
        for code, n in r["statuses"].items():
            merged["statuses"][code] = merged["statuses"].get(code, 0) + n
        merged["errors"] += r["errors"]
        merged["cpu_s"] += r["cpu_s"]
        merged["wall_s"] = max(merged["wall_s"], r["wall_s"])
    return merged


# --- the run --------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Result:
    name: str
    ok: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[int, int]
    errors: int
    server_cpu: float  # share of one core during the window: the event loop's thread
    server_other_cpu: float  # ... the server's other threads (the store's writer, to_thread workers)
    server_child_cpu: float  # ... its child processes (the SQLite ingest process)
    loop_queued: float  # share of the window the event loop's thread was ready to run but had no core
    child_queued: float  # ... the same for the child processes' main threads
    sender_cpu: float
    load: float  # the machine's 1-minute load average (the higher of before and after)

    def line(self) -> str:
        codes = " ".join(f"{c}x{n}" for c, n in sorted(self.statuses.items()))
        return (f"{self.name:<28} {self.rate:>9.0f}/s  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  "
                f"max {self.max_ms:7.2f} ms  server cpu: loop {self.server_cpu:4.0%} + other threads "
                f"{self.server_other_cpu:4.0%} + child processes {self.server_child_cpu:4.0%}  "
                f"senders cpu {self.sender_cpu:4.0%}  waited for a core: loop {self.loop_queued:4.0%}, child "
                f"{self.child_queued:4.0%}  load {self.load:.1f}  "
                f"[{codes}{f' errors={self.errors}' if self.errors else ''}]")


def drive_args(server: Server, args: argparse.Namespace, **kwargs: Any) -> dict[str, Any]:
    """``drive`` against ``server`` with the load the command line asked for."""
    return drive(server.url, concurrency=args.concurrency, senders=args.senders, client=args.client,
                 random_ids=args.ids == "random", **kwargs)


def warm(server: Server, args: argparse.Namespace) -> None:
    """Connections, imports, caches, the SQLite file's first pages: not on the clock."""
    drive_args(server, args, seconds=None, requests=args.warmup, tag="warm")


def measure(server: Server, args: argparse.Namespace, seconds: float | None, requests: int | None) -> Result:
    (main0, other0, child0), (queued0, child_queued0) = server.cpu_s(), server.queued_s()
    load0 = os.getloadavg()[0]
    stats = drive_args(server, args, seconds=seconds, requests=requests, tag="run", rate=args.rate)
    (main1, other1, child1), (queued1, child_queued1) = server.cpu_s(), server.queued_s()
    latencies = sorted(stats["latencies"])
    ok = stats["statuses"].get(202, 0)
    wall = stats["wall_s"]
    return Result(
        name=server.name, ok=ok, rate=ok / wall, p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000, max_ms=(latencies[-1] if latencies else float("nan")) * 1000,
        statuses=stats["statuses"], errors=stats["errors"], server_cpu=(main1 - main0) / wall,
        server_other_cpu=(other1 - other0) / wall, server_child_cpu=(child1 - child0) / wall,
        loop_queued=(queued1 - queued0) / wall, child_queued=(child_queued1 - child_queued0) / wall,
        sender_cpu=stats["cpu_s"] / wall,
        load=max(load0, os.getloadavg()[0]),
    )


def median_result(results: list[Result]) -> Result:
    """The round with the median rate (a real run, not a blend of several)."""
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def count_stored(state: str) -> int | None:
    if not state.startswith("sqlite:///"):
        return None
    import sqlite3
    from urllib.parse import urlsplit

    path = urlsplit(state).path[1:]
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    finally:
        conn.close()


def bottleneck(r: Result, senders: int) -> str:
    """Which side ran out of CPU (each is single-threaded where it matters), or neither; and what each
    side spends per delivery, which is what decides it when both share the machine's cores."""
    cores = os.cpu_count() or 1
    server = r.server_cpu + r.server_other_cpu + r.server_child_cpu
    total = server + r.sender_cpu
    per = 1e6 / r.rate if r.rate else float("nan")
    used = (f"CPU per delivery: server {server * per:.0f} us (event loop {r.server_cpu * per:.0f} + other "
            f"threads {r.server_other_cpu * per:.0f} + child processes {r.server_child_cpu * per:.0f}), senders "
            f"{r.sender_cpu * per:.0f} us; busy: server loop {r.server_cpu:.0%}, senders {r.sender_cpu:.0%} over "
            f"{senders} process(es), {total:.0%} of {cores * 100}% in all")
    if r.server_cpu >= 0.8 and r.server_other_cpu < 0.1:
        return f"the server's event loop (CPU) [{used}]"
    if r.server_child_cpu >= 0.8:
        return f"the server's ingest process (CPU) [{used}]"
    if r.server_cpu + r.server_other_cpu >= 0.9:
        return (f"the server's Python threads: its event loop and its store writer take turns on one "
                f"interpreter lock (GIL), together about a core [{used}]")
    if r.sender_cpu / senders >= 0.8 or (r.sender_cpu > r.server_cpu + r.server_other_cpu and r.sender_cpu > 0.8):
        return f"the senders (CPU) [{used}]"
    if total >= 0.85 * cores:
        return f"the machine's cores, shared by both sides [{used}]"
    if max(r.loop_queued, r.child_queued) >= 0.2:
        return (f"the machine's cores, in bursts: the server was ready to run but waited for a core (event loop "
                f"{r.loop_queued:.0%}, child processes {r.child_queued:.0%} of the time) [{used}]")
    return f"neither side's CPU: waiting (commits, fsync, the GIL, other load) [{used}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--state", help="state URL for fulfiller (default: a new SQLite file in a temp dir)")
    parser.add_argument("--seconds", type=float, default=None, help="measure each side for this long in all, split over the rounds (default 10)")
    parser.add_argument("--requests", type=int, default=None, help="or: measure this many deliveries")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop senders (connections)")
    parser.add_argument("--senders", type=int, default=1, help="sender processes sharing the connections")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="raw: a minimal HTTP/1.1 keep-alive client, one socket per sender (default); "
                             "httpx: one httpx.AsyncClient whose pool holds the connections (it costs ~20x the "
                             "CPU per request and becomes the bottleneck)")
    parser.add_argument("--rate", type=float, default=None,
                        help="pace the deliveries at this many per second in all (default: closed loop, "
                             "each sender as fast as it is answered); latency then counts from when each was due")
    parser.add_argument("--ids", choices=["sequential", "random"], default="sequential",
                        help="event ids: sequential per sender (default), or random (uuid4), as a publisher "
                             "generates them: each delivery then lands on its own pages of every index keyed "
                             "by the id or the creative, and a commit writes several times as many pages")
    parser.add_argument("--warmup", type=int, default=1000, help="deliveries before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="alternate the two sides this many times")
    parser.add_argument("--only", choices=["fulfiller", "bare"], help="measure one side only")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs, database)")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        run_bare("127.0.0.1", args.serve_bare)
        return 0
    if args.seconds is None and args.requests is None:
        args.seconds = 10.0
    if args.seconds is not None and args.requests is not None:
        parser.error("give --seconds or --requests, not both")

    workdir = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    state = args.state or f"sqlite:///{workdir / 'bench.db'}"
    sides = ["fulfiller", "bare"] if args.only is None else [args.only]
    rounds = args.rounds
    seconds = None if args.seconds is None else args.seconds / rounds
    requests = None if args.requests is None else args.requests // rounds
    span = f"{args.seconds:g} s" if args.seconds is not None else f"{args.requests} deliveries"
    pacing = f"paced at {args.rate:g}/s" if args.rate else "closed loop"
    print(f"{args.concurrency} concurrent {args.client} senders in {args.senders} process(es), {pacing}; "
          f"{args.ids} event ids; {span} per side in {rounds} alternating round(s), after {args.warmup} "
          f"warm-up deliveries; {os.cpu_count()} CPU(s); uvicorn on {server_stack()}; state {state.split('://')[0]}"
          f"{' (temp file, WAL, synchronous=FULL)' if not args.state else ''}")
    runs: dict[str, list[Result]] = {side: [] for side in sides}
    servers: dict[str, Server] = {}
    try:
        if "fulfiller" in sides:
            servers["fulfiller"] = start_fulfiller(workdir, state)
        if "bare" in sides:
            servers["bare"] = start_bare(workdir)
        for side in sides:
            warm(servers[side], args)
        # Alternate the sides in short rounds, so that other load on the machine (it varies)
        # falls on both alike; the ratio is taken within each round.
        for i in range(rounds):
            for side in sides:
                result = measure(servers[side], args, seconds, requests)
                runs[side].append(result)
                print(f"round {i + 1}: {result.line()}", flush=True)
        for server in servers.values():
            server.stop()
        if "fulfiller" in sides:
            # Every 202 must be a stored job (the warm-up's included).
            stored = count_stored(state)
            acked = args.warmup + sum(r.statuses.get(202, 0) for r in runs["fulfiller"])
            if stored is not None:
                print(f"jobs stored: {stored} for {acked} acks{'' if stored == acked else '  <-- MISMATCH'}")
    finally:
        for server in servers.values():
            server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir}")

    results = {side: median_result(rs) for side, rs in runs.items()}
    print("median round:")
    for r in results.values():
        print("  " + r.line())
    if len(results) == 2:
        f = results["fulfiller"]
        ratios = sorted(a.rate / b.rate for a, b in zip(runs["fulfiller"], runs["bare"]))
        ratio = ratios[len(ratios) // 2]
        met = ratio >= GOAL_RATIO and f.p99_ms <= GOAL_P99_MS
        print(f"ratio fulfiller/bare (median of rounds {', '.join(f'{x:.2f}' for x in ratios)}): {ratio:.2f} "
              f"(goal >= {GOAL_RATIO}); fulfiller p99 {f.p99_ms:.1f} ms (goal <= {GOAL_P99_MS:g} ms): "
              f"{'MET' if met else 'MISSED'}")
        # A closed loop's tail follows the machine's hiccups as much as the server: the baseline's shows them.
        print(f"p99 per round: fulfiller {', '.join(f'{r.p99_ms:.1f}' for r in runs['fulfiller'])} ms; bare "
              f"Starlette {', '.join(f'{r.p99_ms:.1f}' for r in runs['bare'])} ms")
    for r in results.values():
        print(f"bottleneck for {r.name}: {bottleneck(r, args.senders)}")
    if args.json:
        print(json.dumps({k: [{**vars(v), "statuses": {str(c): n for c, n in v.statuses.items()}} for v in rs]
                          for k, rs in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
