"""The writer thread: one thread per store that runs its writes and commits them in groups.

A write is a function of a cursor, run inside a transaction. While one commit waits on
fsync, new writes queue up and share the next one. A write that fails is undone alone
(its batch runs again with a savepoint per write), and each caller is answered only
after the commit that holds its write.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from fulfiller.store.base import StoreUnavailable
from fulfiller.store.schema import Dialect

Write = Callable[[Any], Any]  # runs its statements on the cursor it is given; what it returns answers its caller
RunWrites = Callable[[Any, list[Write]], list[Any]]


class Writer:
    """Commits a store's writes in groups, on a thread of its own.

    ``submit`` queues a write and returns its result once committed. ``commit_batch`` commits
    one batch on the caller's thread and connection instead (the SQLite ingest child does).
    A backend adapts how a batch runs by overriding ``_run_batch``, ``_before_commit`` and
    ``_rolled_back``.
    """

    max_batch = 256  # writes per commit, at most

    def __init__(
        self,
        connect: Callable[[], Any],
        dialect: Dialect,
        *,
        run_writes: RunWrites | None = None,
        integrity_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        """``connect`` gives a new connection in autocommit mode (the writer issues BEGIN and COMMIT);
        ``run_writes`` runs a batch's writes inside its transaction and gives their results in order (one
        after another unless given); ``integrity_errors`` spoil one write, not the transaction
        (constraint violations, bad data)."""
        self._connect = connect
        self._begin = dialect.begin
        self._run_writes = run_writes or _one_by_one
        self._integrity_errors = integrity_errors
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread; ``submit`` is refused before."""
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what was submitted, then end the thread."""
        if self._thread is not None:
            self._writes.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def submit(self, fn: Write) -> Any:
        """``fn``'s result once the commit that holds it is done. Raises what ``fn`` raised (undone alone), or
        StoreUnavailable when its batch could not commit or the writer is not running."""
        if self._thread is None:
            raise StoreUnavailable("store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._writes.put((fn, fut, loop))
        result = await fut
        if isinstance(result, BaseException):
            raise result
        return result

    def _loop(self) -> None:
        conn = None
        stopping = False
        while not stopping:
            item = self._writes.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._writes.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            conn, results = self.commit_batch(conn, [fn for fn, _, _ in batch])
            # One wake-up per event loop per batch, not one per write.
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            for (_, fut, loop), result in zip(batch, results):
                by_loop.setdefault(loop, []).append((fut, result))
            for loop, settled in by_loop.items():
                loop.call_soon_threadsafe(_settle, settled)
        if conn is not None:
            conn.close()

    def commit_batch(self, conn: Any, fns: list[Write]) -> tuple[Any, list[Any]]:
        """Run one batch of writes on ``conn`` (connecting first if it is None) as one group commit: the
        connection to use next, and each write's result or exception. When the connection or the commit
        fails, nothing in the batch is stored, every write gets the same StoreUnavailable, and the next
        batch reconnects.

        The thread commits every batch with it, and so does the SQLite ingest child (``ingester``),
        which owns its connection: pass None first, then what it returns, and close that when done.
        A batch should hold at most ``max_batch`` writes."""
        try:
            if conn is None:
                conn = self._connect()
            return conn, self._run_batch(conn, fns)
        except Exception as exc:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    pass
            failure = StoreUnavailable(f"store write failed: {type(exc).__name__}: {exc}")
            return None, [failure] * len(fns)

    def _run_batch(self, conn: Any, fns: list[Write]) -> list[Any]:
        """The batch in one transaction: plainly first, then, if a write failed, with a savepoint per write.

        Writes almost never fail (a duplicate is ``ON CONFLICT DO NOTHING``), and every
        statement costs the writer thread the GIL (and, on a server, a round trip): a
        savepoint and its release around every write would double that for nothing.
        """
        results = self._run_plain(conn, fns)
        return results if results is not None else self._run_savepointed(conn, fns)

    def _run_plain(self, conn: Any, fns: list[Write]) -> list[Any] | None:
        """The batch without savepoints; None (rolled back) when one of its writes failed."""
        cur = conn.cursor()
        cur.execute(self._begin)  # a lock not granted in time fails the batch here, once
        try:
            results = self._run_writes(cur, fns)
            self._before_commit(cur)
        except Exception as exc:
            cur.execute("ROLLBACK")  # a dead connection raises here: the whole batch fails
            self._rolled_back(exc)
            return None
        cur.execute("COMMIT")
        return results

    def _run_savepointed(self, conn: Any, fns: list[Write]) -> list[Any]:
        """The batch with each write in its own savepoint, so a failing write fails alone."""
        cur = conn.cursor()
        cur.execute(self._begin)
        results: list[Any] = []
        try:
            for fn in fns:
                cur.execute("SAVEPOINT op")
                try:
                    results.append(fn(cur))
                    cur.execute("RELEASE SAVEPOINT op")
                except Exception as exc:
                    # Undo this write only; if even that fails the connection is gone
                    # and the whole batch fails below.
                    cur.execute("ROLLBACK TO SAVEPOINT op")
                    cur.execute("RELEASE SAVEPOINT op")
                    if isinstance(exc, self._integrity_errors):
                        exc = StoreUnavailable(f"{type(exc).__name__}: {exc}")
                    results.append(exc)
            self._before_commit(cur)
            cur.execute("COMMIT")
        except Exception:
            try:
                cur.execute("ROLLBACK")
            except Exception:
                pass
            raise
        return results

    def _before_commit(self, cur: Any) -> None:
        """The last statement of every batch's transaction (PostgreSQL sends its NOTIFY here)."""

    def _rolled_back(self, exc: Exception) -> None:
        """A write failed the plain attempt, now rolled back; raise when the batch, not one write, is at fault."""


def _one_by_one(cur: Any, fns: list[Write]) -> list[Any]:
    return [fn(cur) for fn in fns]


def _settle(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, result in settled:
        if not fut.done():  # its caller may have been cancelled meanwhile
            fut.set_result(result)
