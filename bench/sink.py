"""The transfer benchmarks' upload target and callback recorder, run in its own process so that what is
measured is the sender: ``python bench/sink.py`` prints its port, then serves until it is killed.

A minimal HTTP/1.1 keep-alive server on uvloop, reading into one buffer it reuses: any sender, fulfiller or
baseline, pays the same for it.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

MiB = 1 << 20


class Sink(asyncio.BufferedProtocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only (as S3-style PUTs): a PUT's body is counted and
    dropped, a POST's kept; ``GET /records`` answers with every request finished so far."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.buffer = memoryview(bytearray(4 * MiB))
        self.head = bytearray()
        self.req: dict[str, Any] | None = None
        self.left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        while data:
            if self.req is None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data = memoryview(self.head[end + 4:])
                self.start(self.head[:end].decode("latin-1"))
                self.head = bytearray()
                if self.req is None:
                    return
            take = min(self.left, len(data))
            self.req["bytes"] += take
            if self.req["method"] != "PUT":
                self.req["body"] += bytes(data[:take])
            self.left -= take
            data = data[take:]
            if self.left == 0:
                self.finish()

    def start(self, head: str) -> None:
        first, *lines = head.split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
        if "transfer-encoding" in headers:
            self.reply(411, b'{"error":"chunked bodies refused"}')
            self.transport.close()
            return
        self.left = int(headers.get("content-length", "0"))
        self.req = {"method": method, "path": target.split("?", 1)[0], "declared": self.left, "bytes": 0, "body": b""}

    def finish(self) -> None:
        req, self.req = self.req, None
        assert req is not None
        if req["method"] == "GET" and req["path"] == "/records":
            self.reply(200, json.dumps(self.records).encode())
            return
        self.records.append({**req, "finished": time.time(), "body": req["body"].decode("utf-8", "replace")})
        self.reply(200, b"{}")

    def reply(self, status: int, body: bytes) -> None:
        self.transport.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (status, len(body), body))


def serve() -> None:
    """Run the sink until killed; print its port on the first line of stdout."""
    import uvloop

    async def main() -> None:
        records: list[dict[str, Any]] = []
        server = await asyncio.get_running_loop().create_server(lambda: Sink(records), "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":
    serve()
