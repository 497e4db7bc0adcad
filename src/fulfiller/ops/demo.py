"""``fulfiller demo``: the whole loop on one machine, no cloud account, no network.

It lays out a local catalog of sample masters, starts a stand-in for the
platform (an upload URL that behaves like a pre-signed R2 PUT, and a callback
endpoint), starts the fulfiller itself, sends three signed events and tells
what happened to each, step by step.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from fulfiller.app import create_app
from fulfiller.config import parse_config
from fulfiller.delivery.worker import worker_service
from fulfiller.jobs import FINAL
from fulfiller.ops.testevent import sample_event, signed_headers

# (file in the package's samples, where the demo catalog keeps it)
SAMPLES = [
    ("9x16.mp4", "DEMO-100/v1/en/9x16.mp4"),
    ("4x5.mov", "DEMO-200/v1/en/4x5.mov"),
    ("1x1.webm", "DEMO-200/v1/en/1x1.webm"),
]


class PlatformStandIn:
    """What the platform offers a fulfiller: a PUT that insists on Content-Length, and a callback."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads: dict[str, dict[str, Any]] = {}
        self.callbacks: dict[str, dict[str, Any]] = {}

    async def put(self, request: Request) -> JSONResponse:
        if "content-length" not in request.headers:
            return JSONResponse({"error": "Content-Length required"}, 411)
        key = request.path_params["key"]
        digest, size = hashlib.sha256(), 0
        target = self.root / key.replace("/", "_")
        with target.open("wb") as fh:
            async for chunk in request.stream():
                digest.update(chunk)
                size += len(chunk)
                fh.write(chunk)
        self.uploads[key] = {"bytes": size, "sha256": digest.hexdigest(),
                             "content_type": request.headers.get("content-type")}
        return JSONResponse({}, 200)

    async def complete(self, request: Request) -> JSONResponse:
        self.callbacks[request.path_params["token"]] = await request.json()
        return JSONResponse({"ok": True}, 202)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/r2/{key:path}", self.put, methods=["PUT"]),
            Route("/waitpoints/tokens/{token}/complete", self.complete, methods=["POST"]),
        ])


async def _start(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False,
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


def _config_text(workdir: Path) -> str:
    return f"""
state: sqlite:///{workdir / "fulfiller.db"}
receiver:
  secrets: ["${{DEMO_SECRET}}"]
worker:
  concurrency: 2
  allow_insecure_http: true
  allowed_upload_hosts: ["127.0.0.1"]
  allowed_callback_hosts: ["127.0.0.1"]
  retry_base_s: 0.2
catalogs:
  samples:
    type: local
    root: {workdir / "masters"}
routes:
  - codes: ["DEMO-*"]
    catalog: samples
"""


async def run_demo(out: Callable[[str], None], *, keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fulfiller-demo-"))
    try:
        return await _demo(workdir, out)
    finally:
        if keep:
            out(f"\nKept the demo's files in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _demo(workdir: Path, out: Callable[[str], None]) -> int:
    out("fulfiller demo: the whole loop on this machine\n")
    samples = files("fulfiller").joinpath("samples")
    for name, rel in SAMPLES:
        dest = workdir / "masters" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(samples.joinpath(name).read_bytes())
    (workdir / "uploads").mkdir()
    out("1. A local catalog of sample masters (layout {code}/v{variation}/{locale}/{aspect}):")
    for _, rel in SAMPLES:
        out(f"     {rel}")

    secret = "whsec_" + secrets.token_hex(16)
    config = parse_config(_config_text(workdir), {"DEMO_SECRET": secret})
    platform = PlatformStandIn(workdir / "uploads")
    p_server, p_task, p_port = await _start(platform.app())
    app = create_app(config, service=worker_service(config))
    f_server, f_task, f_port = await _start(app)
    out(f"2. A stand-in for the platform on 127.0.0.1:{p_port} (pre-signed-style upload URL and callback)")
    out(f"3. The fulfiller on 127.0.0.1:{f_port}, receiver at {config.receiver.path}, 2 workers\n")

    base = f"http://127.0.0.1:{p_port}"
    events = _demo_events(base)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            out("4. Three events, signed as Outpost signs them:")
            for label, event_id, body in events:
                raw = json.dumps(body).encode()
                headers = signed_headers(raw, [secret], topic="video.source_requested", event_id=event_id)
                response = await client.post(f"http://127.0.0.1:{f_port}{config.receiver.path}", content=raw,
                                             headers=headers)
                out(f"     {label:<44} -> HTTP {response.status_code}")
            out("")
            store = app.state.store
            deadline = time.monotonic() + 30
            results = {}
            for _, event_id, _ in events:
                while True:
                    found = [j for j in await store.list_jobs(limit=10) if j.event_id == event_id]
                    if found and found[0].status in FINAL:
                        results[event_id] = await store.get_job(found[0].id)
                        break
                    if time.monotonic() > deadline:
                        out(f"timed out waiting for {event_id}")
                        return 1
                    await store.wait_for_work(0.05)
        out("5. What happened:")
        for (label, event_id, body), n in zip(events, range(1, 10)):
            job = results[event_id]
            token = body["fulfillment"]["completeCallbackUrl"].split("/tokens/")[1].split("/")[0]
            out(f"\n   [{n}] {label}")
            out(f"       job {job.id}: {job.status.upper()}")
            for a in job.attempts:
                status = f"HTTP {a.http_status}" if a.http_status else (a.error or "ok")
                out(f"       - {a.step:<8} {a.duration_ms:>7.1f} ms  {status}  {a.detail or ''}".rstrip())
            upload = platform.uploads.get(body["fulfillment"]["storageKey"])
            if upload:
                out(f"       uploaded {upload['bytes']} bytes as {upload['content_type']}, "
                    f"sha256 {upload['sha256'][:16]}...")
            out(f"       callback body: {json.dumps(platform.callbacks.get(token))}")
        ok = [results[e].status for _, e, _ in events] == ["completed", "completed", "skipped"]
        out("\nAll three ended as expected: two delivered, one negative-ack (skip) so the platform "
            "does not wait an hour." if ok else "\nSomething ended differently than expected; see above.")
        out("Next: write a config (config/example.yaml), then `fulfiller check-config` and `fulfiller serve`.")
        return 0 if ok else 1
    finally:
        f_server.should_exit = True
        await f_task
        p_server.should_exit = True
        await p_task


def _demo_events(base: str) -> list[tuple[str, str, dict[str, Any]]]:
    oss = sample_event("", "", code="DEMO-100", variation=1, aspect="9x16")
    feed = sample_event("", "", code="DEMO-200", variation=1, family="feed", accepted=["1x1", "3x4", "4x5"])
    story = sample_event("", "", code="DEMO-200", variation=1, family="story_reel", accepted=["9x16"])
    out = []
    for label, body in (("OSS DEMO-100 9x16 video", oss), ("AFS DEMO-200 feed (1x1, 3x4, 4x5)", feed),
                        ("AFS DEMO-200 story_reel (9x16): no master", story)):
        body["projectId"] = "019d928c-demo"
        c = body["creative"]
        family = c.get("placementFamily") or c.get("aspectRatio")
        key = f"fb-external/019d928c/{c['code']}/v1/en/{family}.video"
        token = "waitpoint_" + secrets.token_hex(8)
        body["fulfillment"].update({
            "storageKey": key,
            "uploadUrl": f"{base}/r2/{key}?X-Amz-Expires=3600&X-Amz-Signature={secrets.token_hex(32)}",
            "completeCallbackUrl": f"{base}/waitpoints/tokens/{token}/complete",
        })
        out.append((label, "evt_demo_" + secrets.token_hex(6), body))
    return out

