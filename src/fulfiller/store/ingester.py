"""Verified deliveries parsed and committed by a child process, off the event loop's interpreter lock.

At intake rates a writer thread and the event loop take turns on one interpreter
lock (GIL): every statement the writer runs gives the lock up and waits to get it
back, and each hand-over costs the loop as much as a delivery's own work. A child
process has an interpreter of its own and runs on the other core; the loop only
writes each verified delivery to a pipe and reads the verdicts back. The child
also parses and plans each delivery (``intake.admit``), the largest share of a
delivery's Python work after the HTTP server's own.

The contract does not change: a delivery is acked only after the child says the
commit holding it is done. The child commits whatever has arrived as one batch
(the same group commit the writer thread does, ``SqlStore._commit``), so while
one commit waits on fsync the next batch queues in the pipe.

Wire: each message is a 4-byte little-endian length and a pickle. The parent sends
``(seq, event_id, topic, body, received_at)``; the child answers a list of
``(seq, verdict)``: True (stored), False (a duplicate), or ``(refusal, text)``
where the refusal is ``BAD_BODY`` (not a JSON object) or ``UNAVAILABLE`` (the
store could not commit it).

The child also writes the log line of each delivery it took (``intake.log_taken``),
after its answers, so that formatting them costs the event loop nothing; it logs
as the server does (format and level from ``logs.setup_logging``), and its lines
share stderr with the server's whole (see ``logs.BlockHandler``).

The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group, and
the server still needs it to answer its in-flight deliveries) and stops when its
stdin closes: when the parent closes it, or dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fulfiller.intake.admission import Delivery, NotAnObject, admit, log_taken
from fulfiller.logs import setup_logging
from fulfiller.store.base import StoreUnavailable
from fulfiller.store.sql import Ingest, SqlStore

log = logging.getLogger("fulfiller.store.ingester")

_LENGTH = struct.Struct("<I")
_READ_SIZE = 1 << 16  # a pipe's capacity; a larger buffer is allocated with mmap on every read
BAD_BODY = "bad_body"
UNAVAILABLE = "unavailable"


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


class Frames:
    """Messages out of a byte stream that arrives in arbitrary pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        messages = []
        start = 0
        while len(buffer) - start >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer, start)
            end = start + _LENGTH.size + size
            if end > len(buffer):
                break
            messages.append(pickle.loads(memoryview(buffer)[start + _LENGTH.size:end]))
            start = end
        del buffer[:start]
        return messages


def to_wire(seq: int, delivery: Delivery) -> tuple[Any, ...]:
    return (seq, delivery.event_id, delivery.topic, delivery.body, delivery.received_at)


def from_wire(message: tuple[Any, ...]) -> tuple[int, Delivery]:
    seq, *fields = message
    return seq, Delivery(*fields)


class _Verdicts(asyncio.Protocol):
    """The child's stdout: verdicts for the parent, then EOF when the child ends."""

    def __init__(self, owner: IngestProcess, generation: int) -> None:
        self._owner = owner
        self._generation = generation
        self._frames = Frames()

    def data_received(self, data: bytes) -> None:
        for verdicts in self._frames.feed(data):
            self._owner._settle(verdicts)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self._generation)


class IngestProcess:
    """The parent's side: starts the child on first use, sends it deliveries, and answers each caller.

    It serves the event loop it was first used on (the server's); if the child dies,
    the writes it held fail with StoreUnavailable (the sender retries them) and the
    next ingest starts a new one, at most once per ``restart_after_s``.
    """

    restart_after_s = 1.0

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._generation = 0
        self._started_at = 0.0
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._starting: asyncio.Task[None] | None = None
        self._closed = False

    async def accept(self, delivery: Delivery) -> bool:
        """True when the child committed the delivery, False for a duplicate id; NotAnObject or
        StoreUnavailable when it refused it."""
        await self.ensure_running()
        if self._stdin is None or self.loop is None:  # it started, and ended before this caller resumed
            raise StoreUnavailable("ingest process exited")
        self._seq += 1
        seq = self._seq
        fut = self.loop.create_future()
        self._waiting[seq] = fut
        self._stdin.write(frame(to_wire(seq, delivery)))  # at once: the child starts on it while the loop goes on
        verdict = await fut
        if isinstance(verdict, bool):
            return verdict
        refusal, text = verdict
        raise NotAnObject(text) if refusal == BAD_BODY else StoreUnavailable(text)

    async def ensure_running(self) -> None:
        """Start the child if it is not running (raise StoreUnavailable while it may not be restarted yet)."""
        if self._stdin is not None:
            return
        if self._closed:
            raise StoreUnavailable("store is closed")
        if self._starting is None:  # callers that arrive while it starts wait for the same start
            if self._generation and time.monotonic() - self._started_at < self.restart_after_s:
                raise StoreUnavailable("ingest process exited; restarting")
            self.loop = asyncio.get_running_loop()
            self._starting = self.loop.create_task(self._start())
            self._starting.add_done_callback(self._started)
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        assert self.loop is not None
        self._generation += 1
        self._started_at = time.monotonic()
        generation = self._generation
        self._proc = None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, self.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                env=_child_env(),
            )
            assert self._proc.stdin is not None and self._proc.stdout is not None
            await self.loop.connect_read_pipe(lambda: _Verdicts(self, generation), self._proc.stdout)
            self._stdin, _ = await self.loop.connect_write_pipe(asyncio.Protocol, self._proc.stdin)
        except OSError as exc:
            self._stop_child()
            if self._proc is not None and self._proc.poll() is None:  # started, but cannot be talked to
                self._proc.kill()
            raise StoreUnavailable(f"cannot start the ingest process: {exc}") from exc

    def _started(self, task: asyncio.Task[None]) -> None:
        self._starting = None
        if not task.cancelled():
            task.exception()  # its awaiters have it; retrieved here so an unawaited failure is not reported

    def _settle(self, verdicts: list[tuple[int, Any]]) -> None:
        for seq, verdict in verdicts:
            fut = self._waiting.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result(verdict)

    def _lost(self, generation: int) -> None:
        """The child's stdout closed: it ended. What it had not answered was not acked, so fails retryably."""
        if generation != self._generation:
            return
        code = self._proc.poll() if self._proc is not None else None
        if not self._closed:
            log.error("ingest process exited (code %s); in-flight deliveries answered 503", code)
        self._stop_child()
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result((UNAVAILABLE, "ingest process exited"))
        self._waiting.clear()

    def _stop_child(self) -> None:
        if self._stdin is not None:
            self._stdin.close()
            self._stdin = None

    async def close(self) -> None:
        """Close the child's stdin and wait for it to answer what it holds and exit."""
        self._closed = True
        proc = self._proc
        if proc is None:
            return
        self._stop_child()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        self._proc = None


def _child_env() -> dict[str, str]:
    """The parent's environment, with this copy of the package first on the child's path."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


# --- the child ---------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(url: str, inbox_fd: int, outbox_fd: int) -> None:
    """Admit and commit the deliveries read from ``inbox_fd``, answering on ``outbox_fd``, until EOF.

    Whatever has arrived when a commit ends is admitted and committed as the next batch.
    Admission and commits share one thread: a second thread admitting the next batch while
    one commits would only take turns with it on this process's interpreter lock.
    """
    from fulfiller.store.sqlite import SQLiteStore

    store = SQLiteStore(url)
    frames = Frames()
    conn = None
    try:
        while data := os.read(inbox_fd, _READ_SIZE):
            batch = [_admit(store, *from_wire(message)) for message in frames.feed(data)]
            verdicts = [(seq, item) for seq, item in batch if not isinstance(item, Ingest)]
            ingests = [(seq, item) for seq, item in batch if isinstance(item, Ingest)]
            taken: list[tuple[Ingest, bool]] = []
            for start in range(0, len(ingests), store.max_batch):
                chunk = ingests[start:start + store.max_batch]
                conn, results = store._commit(conn, [ingest for _, ingest in chunk])
                for (seq, ingest), result in zip(chunk, results):
                    if isinstance(result, bool):
                        taken.append((ingest, result))
                        verdicts.append((seq, result))
                    else:
                        verdicts.append((seq, (UNAVAILABLE, str(result))))
            if verdicts:
                _write_all(outbox_fd, frame(verdicts))
            for ingest, stored in taken:  # after the answers: the loop waits on them, not on these
                log_taken(ingest.event.event_id, ingest.event.topic, stored)
    finally:
        if conn is not None:
            conn.close()


def _admit(store: SqlStore, seq: int, delivery: Delivery) -> tuple[int, Any]:
    """``(seq, Ingest)`` to commit, or ``(seq, verdict)`` when the delivery is refused already."""
    try:
        return seq, Ingest(store, admit(delivery))
    except NotAnObject as exc:
        return seq, (BAD_BODY, str(exc))
    except Exception as exc:  # a bug: refused retryably, and reported, not the end of the process
        log.exception("cannot admit delivery %s", delivery.event_id)
        return seq, (UNAVAILABLE, f"{type(exc).__name__}: {exc}")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Verdicts get a private copy of stdout; anything else printed goes to stderr, not into the stream.
    outbox_fd = os.dup(1)
    os.dup2(2, 1)
    if "FULFILLER_LOG_FORMAT" in os.environ:  # as the server logs (logs.setup_logging leaves its choice here)
        setup_logging(os.environ["FULFILLER_LOG_FORMAT"], os.environ.get("FULFILLER_LOG_LEVEL", "INFO"))
    serve(sys.argv[1], 0, outbox_fd)


if __name__ == "__main__":
    main()
