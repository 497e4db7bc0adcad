"""Log lines: one JSON object a line for machines, or plain text for people at a terminal.

Anything about an event or a job carries ``event_id`` / ``job_id`` (pass them in
``extra``) so one grep follows a delivery end to end. URLs are redacted here
as a last line of defence; callers should not log credentials in the first place.
Text from peers (an error response, an exception's message) can hold line breaks
and terminal escapes: no format lets it start a line of its own. JSON escapes
control characters; the text format writes them as escapes (``\n``, ``\x1b``)
and indents every line of a traceback under the line it belongs to.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import select
import sys
import threading
import time
from collections.abc import Collection
from datetime import datetime
from typing import TextIO

import orjson

from fulfiller.redact import redact_text

# Keys callers may attach with ``extra=`` that belong in the line.
FIELDS = (
    "event_id", "job_id", "topic", "status", "outcome", "step", "http_status", "duration_ms",
    "code", "bytes", "content_type", "catalog", "object", "worker", "attempt", "reason", "wait_s", "client", "path",
)


# The receiver writes a line per delivery: these keep that line cheap (see JsonFormatter).
_std_encode = json.JSONEncoder(default=str).encode
_JSON_UNSAFE = re.compile(r"[\x80-\x9f\u2028\u2029]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def _encode(line: dict[str, object]) -> str:
    """The line as JSON: orjson, far cheaper than the json module for a line per delivery; anything it
    cannot write (an integer past 64 bits) as the json module writes it."""
    try:
        text = orjson.dumps(line, default=str).decode()
    except orjson.JSONEncodeError:
        return _std_encode(line)  # ensure_ascii: every character past ASCII is escaped already
    # orjson escapes C0 controls; what else some readers take for a line break (U+2028, U+2029, NEL)
    # or a terminal control (C1) is escaped here, as JSON allows for any character.
    return text if text.isascii() else _JSON_UNSAFE.sub(_json_escape, text)


# What could break a line or move a terminal's cursor: C0 and C1 controls, DEL, Unicode line separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def _one_line(text: str) -> str:
    """``text`` with every control character written as an escape, so that it stays on its line."""
    return text if text.isprintable() else _CONTROL.sub(_escape, text)


def _redact(text: str) -> str:
    # Every URL redact_text rewrites contains "://"; most text has none, and the check costs nothing.
    return redact_text(text) if "://" in text else text


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # the last second written, formatted: lines come many a second

    def _utc_ms(self, ts: float) -> str:
        """``ts`` as RFC 3339 UTC with milliseconds, as datetime would write it, without building a datetime."""
        frac, whole = math.modf(ts)
        second, us = int(whole), round(frac * 1e6)  # datetime.fromtimestamp's rounding, truncated to ms below
        if us >= 1_000_000:
            second, us = second + 1, us - 1_000_000
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{us // 1000:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self._utc_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _redact(record.getMessage()),
        }
        fields = record.__dict__  # extra= sets instance attributes; a miss here costs no AttributeError
        for key in FIELDS:
            value = fields.get(key)
            if value is not None:
                line[key] = _redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact_text(self.formatException(record.exc_info))
        return _encode(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(
            f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None
        )
        text = f"{ts} {record.levelname:<7} {_one_line(redact_text(record.getMessage()))}"
        if extras:
            text += f"  [{_one_line(redact_text(extras))}]"
        if record.exc_info:
            # A traceback spans lines; each is indented, so none (an exception's message included) reads as a record.
            for line in redact_text(self.formatException(record.exc_info)).split("\n"):
                text += "\n    " + _one_line(line)
        return text


class BlockHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes the lines of busy loggers in blocks, not with a write() each.

    A line per delivery means thousands of write() calls a second. Lines from the
    loggers named in ``batched`` wait, and go out every ``interval_s`` (a daemon
    thread) or with the next line of any other kind; every other line, and any
    WARNING or above, is written at once, with whatever waited before it, in order.
    So a shutdown (which logs) writes everything, even when the server ends by
    re-raising SIGTERM and no exit handler runs; a process killed outright loses at
    most ``interval_s`` of delivery lines (what it acked is in the store).

    Each block is whole lines in one write() of at most PIPE_BUF bytes, which a pipe
    keeps whole: the server and its ingest process share stderr, and their lines
    never cut into each other.
    """

    def __init__(self, stream: TextIO, batched: Collection[str] = ("fulfiller.receiver",),
                 interval_s: float = 0.1) -> None:
        super().__init__(stream)
        self.batched = frozenset(batched)
        self.interval_s = interval_s
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._stopped = threading.Event()
        threading.Thread(target=self._flush_every, name="log-flusher", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            size = len(line) if line.isascii() else len(line.encode("utf-8", "backslashreplace"))
            if self._pending_bytes + size > select.PIPE_BUF:
                self._write_pending()
            self._pending.append(line)
            self._pending_bytes += size
            if record.levelno >= logging.WARNING or record.name not in self.batched:
                self._write_pending()
        except RecursionError:  # as StreamHandler.emit does
            raise
        except Exception:
            self.handleError(record)

    def _write_pending(self) -> None:
        if self._pending:
            self.stream.write("".join(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
        self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _flush_every(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.flush()

    def close(self) -> None:
        self._stopped.set()
        self.flush()
        super().close()


def setup_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Route the product's and the server's logs to stderr in one format.

    The choice is also left in ``FULFILLER_LOG_FORMAT`` and ``FULFILLER_LOG_LEVEL``,
    where the processes this one starts (the SQLite ingest process) read it.
    """
    os.environ["FULFILLER_LOG_FORMAT"], os.environ["FULFILLER_LOG_LEVEL"] = fmt, level
    handler = BlockHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BlockHandler):  # set up again (tests do): stop the old one's thread
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # What a record would otherwise gather on every call (its thread, process, caller's frame) is in no
    # line we write; the logging HOWTO's "Optimization" section names these switches.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    # uvicorn's access log repeats what our receiver logs, with the raw path and query.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO, urllib3 at DEBUG with the query string (a pre-signed
    # signature); our attempt lines already say what matters.
    for name in ("httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
