"""The server's side of the ingest child (``ingester``): starts it, sends it deliveries, answers each caller.

``SQLiteStore.ingest`` hands each verified delivery to ``IngestProcess``, which writes
it to the child's stdin (``ingest_wire``) and resolves the caller once the child
answers that the commit holding it is done.

A child that does not answer within ``deadline_s`` (stopped, or stuck in an fsync)
is killed: what it held is answered 503, which the sender retries, and the next
delivery starts a new child. Outpost would otherwise wait its own timeout on every
delivery while the child hangs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fulfiller.intake.admission import Delivery, NotAnObject
from fulfiller.store.base import StoreUnavailable
from fulfiller.store.ingest_wire import BAD_BODY, UNAVAILABLE, Frames, frame, probe_to_wire, to_wire

log = logging.getLogger("fulfiller.store.ingester")  # the name its lines have always logged under

CHILD_MODULE = "fulfiller.store.ingester"  # run as ``python -m``; named, not imported (it imports the store)
# A delivery is answered within 10 s whatever the child does; a commit that waits on another process's
# lock gives up first (the store's busy timeout, 5 s unless set), so that wait is not taken for a hang.
DEADLINE_S = 8.0


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
    or leaves a message unanswered for ``deadline_s`` (then it is killed), the writes
    it held fail with StoreUnavailable (the sender retries them) and the next ingest
    starts a new one, at most once per ``restart_after_s``.
    """

    restart_after_s = 1.0

    def __init__(self, url: str, *, deadline_s: float = DEADLINE_S) -> None:
        self.url = url
        self.deadline_s = deadline_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._generation = 0
        self._started_at = 0.0
        self._seq = 0
        # Unanswered messages, oldest first, with when each was sent (the watchdog reads the first).
        self._waiting: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._starting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The child last started (None before the first use, and after ``close``); it may have exited since."""
        return self._proc

    async def ingest(self, delivery: Delivery) -> bool:
        """True when the child committed the delivery, False for a duplicate id; NotAnObject or
        StoreUnavailable when it refused it, or did not answer within ``deadline_s``."""
        verdict = await self._ask(lambda seq: to_wire(seq, delivery))
        if isinstance(verdict, bool):
            return verdict
        refusal, text = verdict
        raise NotAnObject(text) if refusal == BAD_BODY else StoreUnavailable(text)

    async def probe(self) -> None:
        """Prove the child answers (after the commit it is in, if any); StoreUnavailable when it cannot be
        started, or does not answer within ``deadline_s``."""
        verdict = await self._ask(probe_to_wire)
        if not isinstance(verdict, bool):
            raise StoreUnavailable(verdict[1])

    async def _ask(self, message: Callable[[int], tuple[Any, ...]]) -> Any:
        """Send the child ``message(seq)`` and wait for its verdict."""
        await self._ensure_running()
        if self._stdin is None or self.loop is None:  # it started, and ended before this caller resumed
            raise StoreUnavailable("ingest process exited")
        self._seq += 1
        seq = self._seq
        fut = self.loop.create_future()
        self._waiting[seq] = (fut, time.monotonic())
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self.deadline_s, self._watch)
        self._stdin.write(frame(message(seq)))  # at once: the child starts on it while the loop goes on
        return await fut

    async def _ensure_running(self) -> None:
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
                [sys.executable, "-m", CHILD_MODULE, self.url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
            waiting = self._waiting.pop(seq, None)
            if waiting is not None and not waiting[0].done():
                waiting[0].set_result(verdict)

    def _watch(self) -> None:
        """The watchdog: due when the oldest unanswered message may be ``deadline_s`` old."""
        self._watchdog = None
        if not self._waiting:
            return
        assert self.loop is not None
        _, sent_at = next(iter(self._waiting.values()))
        overdue_in = sent_at + self.deadline_s - time.monotonic()
        if overdue_in > 0:
            self._watchdog = self.loop.call_later(overdue_in, self._watch)
            return
        proc = self._proc
        log.error("ingest process (pid %s) did not answer within %g s; killed, in-flight deliveries answered 503",
                  proc.pid if proc is not None else "?", self.deadline_s)
        if proc is not None and proc.poll() is None:
            proc.kill()  # a stopped process dies too; one stuck in the kernel dies on its way out
        self._generation += 1  # the killed child's end is not news: what it held is answered here
        self._fail_waiting(f"ingest process did not commit within {self.deadline_s:g} s; restarting it")

    def _lost(self, generation: int) -> None:
        """The child's stdout closed: it ended. What it had not answered was not acked, so fails retryably."""
        if generation != self._generation:
            return
        code = self._proc.poll() if self._proc is not None else None
        if not self._closed:
            log.error("ingest process exited (code %s); in-flight deliveries answered 503", code)
        self._fail_waiting("ingest process exited")

    def _fail_waiting(self, reason: str) -> None:
        """The child is gone: stop writing to it, and answer what it held as unavailable."""
        self._stop_child()
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_result((UNAVAILABLE, reason))
        self._waiting.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

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
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _child_env() -> dict[str, str]:
    """The parent's environment, with this copy of the package first on the child's path."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
