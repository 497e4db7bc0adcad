"""Verified deliveries parsed and committed by a child process, off the event loop's interpreter lock.

At intake rates a writer thread and the event loop take turns on one interpreter
lock (GIL): every statement the writer runs gives the lock up and waits to get it
back, and each hand-over costs the loop as much as a delivery's own work. A child
process has an interpreter of its own and runs on the other core; the loop only
writes each verified delivery to a pipe and reads the verdicts back. The child
also parses and plans each delivery (``admission.plan_delivery``), the largest share of a
delivery's Python work after the HTTP server's own.

The contract does not change: a delivery is acked only after the child says the
commit holding it is done. The child commits whatever has arrived as one batch
(the same group commit the writer thread does, ``Writer.commit_batch``), so while
one commit waits on fsync the next batch queues in the pipe.

This module is the child (``python -m fulfiller.store.ingester``); the server's side,
which starts it and talks to it, is ``ingest_client.IngestProcess``, and the messages
both sides exchange are ``ingest_wire``'s.

The child also writes the log line of each delivery it took (``admission.log_ingested``),
after its answers, so that formatting them costs the event loop nothing; it logs
as the server does (format and level from ``logs.setup_logging``), and its lines
share stderr with the server's whole (see ``logs.BlockHandler``).

The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group, and
the server still needs it to answer its in-flight deliveries) and stops when its
stdin closes: when the parent closes it, or dies.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

from fulfiller.intake.admission import Delivery, NotAnObject, log_ingested, plan_delivery
from fulfiller.logs import setup_logging
from fulfiller.store.ingest import Ingest, Ingestion
from fulfiller.store.ingest_wire import BAD_BODY, UNAVAILABLE, Frames, frame, from_wire
from fulfiller.store.sqlite import SQLiteStore

log = logging.getLogger("fulfiller.store.ingester")

_READ_SIZE = 1 << 16  # a pipe's capacity; a larger buffer is allocated with mmap on every read


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
    store = SQLiteStore(url)
    frames = Frames()
    conn = None
    try:
        while data := os.read(inbox_fd, _READ_SIZE):
            batch = [_plan(store.ingestion, *from_wire(message)) for message in frames.feed(data)]
            verdicts = [(seq, item) for seq, item in batch if not isinstance(item, Ingest)]
            ingests = [(seq, item) for seq, item in batch if isinstance(item, Ingest)]
            taken: list[tuple[Ingest, bool]] = []
            for start in range(0, len(ingests), store.writer.max_batch):
                chunk = ingests[start:start + store.writer.max_batch]
                conn, results = store.writer.commit_batch(conn, [ingest for _, ingest in chunk])
                for (seq, ingest), result in zip(chunk, results):
                    if isinstance(result, bool):
                        taken.append((ingest, result))
                        verdicts.append((seq, result))
                    else:
                        verdicts.append((seq, (UNAVAILABLE, str(result))))
            if verdicts:
                _write_all(outbox_fd, frame(verdicts))
            for ingest, stored in taken:  # after the answers: the loop waits on them, not on these
                log_ingested(ingest.event, stored)
    finally:
        if conn is not None:
            conn.close()


def _plan(ingestion: Ingestion, seq: int, delivery: Delivery | None) -> tuple[int, Any]:
    """``(seq, Ingest)`` to commit, or ``(seq, verdict)`` when the delivery is refused already, or is a probe
    (answered True with the batch's verdicts, after its commits)."""
    if delivery is None:
        return seq, True
    try:
        return seq, Ingest(ingestion, plan_delivery(delivery))
    except NotAnObject as exc:
        return seq, (BAD_BODY, str(exc))
    except Exception as exc:  # a bug: refused retryably, and reported, not the end of the process
        log.exception("cannot plan delivery %s", delivery.event_id)
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
