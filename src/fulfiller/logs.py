"""Log lines: one JSON object a line for machines, or plain text for people at a terminal.

Anything about an event or a job carries ``event_id`` / ``job_id`` (pass them in
``extra``) so one grep follows a delivery end to end. URLs are redacted here
as a last line of defence; callers should not log credentials in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from fulfiller.redact import redact_text

# Keys callers may attach with ``extra=`` that belong in the line.
FIELDS = (
    "event_id", "job_id", "topic", "status", "outcome", "step", "http_status", "duration_ms",
    "bytes", "catalog", "object", "worker", "attempt", "reason",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = redact_text(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(
            f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None
        )
        text = f"{ts} {record.levelname:<7} {redact_text(record.getMessage())}"
        if extras:
            text += f"  [{redact_text(extras)}]"
        if record.exc_info:
            text += "\n" + redact_text(self.formatException(record.exc_info))
        return text


def setup_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Route the product's and the server's logs to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's access log repeats what our receiver logs, with the raw path and query.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request at INFO; our attempt lines already say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
