"""Job rows written straight into a state database, as a job stored before intake bounded what it takes
(or a row edited by hand) sits there: every way a stored job can be odd that a worker, the admin API, the
console and the CLI must survive."""

from __future__ import annotations

import time
from typing import Any

from fulfiller.jobs import new_job_id

# Past the JSON decoder's recursion limit: the stored text no longer decodes.
NESTED = '{"creative": ' + "[" * 100_000 + "]" * 100_000 + "}"

ODD_ROWS: dict[str, dict[str, Any]] = {
    "expires after year 9999": {"expires_at": 253402300799.0 + 86400},
    "expires at infinity": {"expires_at": float("inf")},
    "lone surrogates": {"payload": '{"creative": {"code": "\\ud800HRT", "\\udfffkey": 1}, "projectSlug": "\\udc00"}'},
    "creative not an object": {"payload": '{"creative": "HRT-1", "projectSlug": ["x"]}'},
    "code a number": {"payload": '{"creative": {"code": 1212, "variation": 1e400}}'},
    "payload not an object": {"payload": "[1, 2, 3]"},
    "payload not JSON": {"payload": "{not json"},
    "payload NaN": {"payload": '{"creative": {"code": NaN}}'},
    "payload nested too deep": {"payload": NESTED},
    "payload nested just under the limit": {"payload": '{"a": ' + "[" * 900 + "]" * 900 + "}"},
    "control characters": {"status": "failed", "error": "line\n\x1b[31mforged line", "code": "HRT\r\n-1"},
}


def job_row(event_id: str, **columns: Any) -> tuple[str, str, tuple[Any, ...]]:
    """A new job id, and the INSERT (``?`` placeholders) of its row under the stored event ``event_id``: the
    ``columns`` given, the rest as a fresh queued job's."""
    now = time.time()
    values = {"id": new_job_id(), "event_id": event_id, "status": "queued", "payload": "{}", "created_at": now,
              "updated_at": now, **columns}
    sql = f"INSERT INTO jobs ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"
    return str(values["id"]), sql, tuple(values.values())
