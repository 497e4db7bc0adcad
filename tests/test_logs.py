"""Log lines: the formatters on their own, then everything a real ``fulfiller serve`` writes.

The formatters: one JSON object a line (tracebacks included), ``event_id`` and
``job_id`` carried through, URLs redacted in messages, fields and exceptions.
The process: a scripted run (a retried upload, a retried callback, a refused
upload, an invalid request, a bad signature, admin calls, a rerun) with its
stderr captured; the lines an operator reads for each are there, and the whole
log holds none of the credentials the run handled.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import select
import shutil
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fulfiller.logs import FIELDS, BlockHandler, JsonFormatter, TextFormatter, setup_logging
from fulfiller.ops.testevent import signed_headers
from support.fulfiller_proc import FulfillerProcess, attempts
from support.platform import run_platform, source_requested, storage_key
from support.servers import wait_until

MEDIA = Path(__file__).parent / "media"
TIMEOUT_S = 30

PRESIGNED = (
    "https://acct.r2.cloudflarestorage.com/bucket/fb-external/p/HRT-1/v1/en/9x16.video"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20250101%2Fauto%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=5f1e0c9d8b7a69584736251403f2e1d0c9b8a79685746352413f2e1d0c9b8a7"
)
SIGNATURE = "5f1e0c9d8b7a69584736251403f2e1d0c9b8a79685746352413f2e1d0c9b8a7"
CALLBACK = "https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_9Zq3xYw7Lk2/complete"
CALLBACK_TOKEN = "waitpoint_9Zq3xYw7Lk2"


def record(msg: str, *args: Any, level: int = logging.INFO, exc: BaseException | None = None,
           **extra: Any) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.LogRecord("fulfiller.engine", level, __file__, 42, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def raised(message: str) -> BaseException:
    try:
        raise RuntimeError(message)
    except RuntimeError as exc:
        return exc


# --- JsonFormatter ----------------------------------------------------------------------


def test_json_line_carries_event_and_job_ids() -> None:
    line = JsonFormatter().format(record("upload %s", "ok", event_id="evt_1", job_id="job_1", step="upload",
                                         http_status=200, duration_ms=12.5))
    assert "\n" not in line
    out = json.loads(line)
    assert out["msg"] == "upload ok"
    assert out["level"] == "info" and out["logger"] == "fulfiller.engine"
    assert out["ts"].endswith("Z")
    assert (out["event_id"], out["job_id"], out["step"], out["http_status"], out["duration_ms"]) == (
        "evt_1", "job_1", "upload", 200, 12.5)


def test_json_leaves_out_empty_and_unlisted_fields() -> None:
    out = json.loads(JsonFormatter().format(record("x", job_id=None, password="hunter2", upload_url=PRESIGNED)))
    assert set(out) == {"ts", "level", "logger", "msg"}
    assert "hunter2" not in json.dumps(out) and SIGNATURE not in json.dumps(out)


def test_json_redacts_urls_in_message_args_and_fields() -> None:
    line = JsonFormatter().format(record("PUT %s answered 403 (callback %s)", PRESIGNED, CALLBACK,
                                         reason=f"gave up on {CALLBACK}", object=PRESIGNED))
    out = json.loads(line)
    for secret in (SIGNATURE, CALLBACK_TOKEN, "AKIDEXAMPLE"):
        assert secret not in line
    assert "acct.r2.cloudflarestorage.com" in out["msg"]  # the host stays: operators need it
    assert "REDACTED" in out["msg"] and "REDACTED" in out["reason"] and "REDACTED" in out["object"]


def test_json_traceback_stays_on_one_line_and_is_redacted() -> None:
    exc = raised(f"connect failed for {PRESIGNED}")
    line = JsonFormatter().format(record("job crashed", level=logging.ERROR, exc=exc, job_id="job_2"))
    assert "\n" not in line
    out = json.loads(line)
    assert out["level"] == "error" and out["job_id"] == "job_2"
    assert "Traceback" in out["exc"] and "RuntimeError" in out["exc"]
    assert SIGNATURE not in line and "REDACTED" in out["exc"]


def test_json_line_for_odd_values() -> None:
    """Non-string field values pass through as JSON; unprintable ones become strings, never an error."""
    line = JsonFormatter().format(record("odd", bytes=10, attempt=2, worker=object(), catalog="local"))
    out = json.loads(line)
    assert out["bytes"] == 10 and out["attempt"] == 2 and out["catalog"] == "local"
    assert isinstance(out["worker"], str)


def test_json_line_keeps_integers_past_64_bits_and_non_ascii_text() -> None:
    """The fast encoder cannot write an integer past 64 bits; the line is then written as the json module
    writes it, not dropped."""
    line = JsonFormatter().format(record("größe", bytes=2**70, catalog="tëst"))
    out = json.loads(line)
    assert out["bytes"] == 2**70 and out["msg"] == "größe" and out["catalog"] == "tëst"


# --- TextFormatter ----------------------------------------------------------------------


def test_text_line_has_fields_and_redacts() -> None:
    line = TextFormatter().format(record("PUT %s failed", PRESIGNED, event_id="evt_9", job_id="job_9",
                                         reason=CALLBACK))
    assert "\n" not in line
    assert "INFO" in line and "event_id=evt_9" in line and "job_id=job_9" in line
    assert SIGNATURE not in line and CALLBACK_TOKEN not in line
    assert "REDACTED" in line


def test_text_traceback_is_redacted() -> None:
    text = TextFormatter().format(record("boom", level=logging.ERROR, exc=raised(f"lost {CALLBACK}")))
    assert "Traceback" in text and CALLBACK_TOKEN not in text and "REDACTED" in text


# --- nothing a peer sends can forge a line -------------------------------------------------------
# A peer's error response or an exception's message is written into lines: its CR/LF (and terminal
# escapes) must not start a line that reads as ours.

FORGED = "upload answered 400: bad\r\n12:00:00 INFO    job completed  [job_id=job_x]\x1b[2K\u2028\x85"


def test_text_line_escapes_control_characters_in_the_message_and_fields() -> None:
    line = TextFormatter().format(record("upload failed: %s", FORGED, reason=FORGED, job_id="job_1"))
    assert line.splitlines() == [line]  # one line, by every line-splitting rule Python knows
    assert "\x1b" not in line and "\x85" not in line
    assert "bad\\r\\n12:00:00 INFO" in line and "\\x1b[2K\\u2028\\x85" in line


def test_text_traceback_lines_are_all_indented_under_their_record() -> None:
    text = TextFormatter().format(record("boom", level=logging.ERROR, exc=raised(FORGED)))
    first, *rest = text.split("\n")
    assert "ERROR" in first and rest
    assert all(line.startswith("    ") for line in rest)  # none can pass for a record of its own
    assert "\r" not in text and "\x1b" not in text
    assert any(line.strip() == "Traceback (most recent call last):" for line in rest)


def test_json_line_escapes_control_characters_everywhere() -> None:
    line = JsonFormatter().format(record("upload failed: %s", FORGED, level=logging.ERROR, reason=FORGED,
                                         exc=raised(FORGED)))
    assert line.splitlines() == [line]
    out = json.loads(line)
    assert FORGED in out["msg"] and out["reason"] == FORGED and FORGED in out["exc"]


# --- setup_logging ----------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "urllib3")
    loggers = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate,
                   logging.getLogger(n).disabled) for n in names}
    switches = ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile")
    gathered = {name: getattr(logging, name) for name in switches}
    env = {name: os.environ.get(name) for name in ("FULFILLER_LOG_FORMAT", "FULFILLER_LOG_LEVEL")}
    yield
    for name, value in env.items():  # setup_logging leaves its choice there for the processes it starts
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    for name, value in gathered.items():
        setattr(logging, name, value)
    root.handlers[:], root.level = saved[0], saved[1]
    for n, (handlers, level, propagate, disabled) in loggers.items():
        lg = logging.getLogger(n)
        lg.handlers[:], lg.level, lg.propagate, lg.disabled = handlers, level, propagate, disabled


def test_setup_logging_writes_json_lines_to_stderr(restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    setup_logging("json", "INFO")
    logging.getLogger("fulfiller.test").info("hello %s", PRESIGNED, extra={"event_id": "evt_s"})
    logging.getLogger("fulfiller.test").debug("not at INFO")
    logging.getLogger("httpx").info("HTTP Request: PUT %s", PRESIGNED)  # httpx's own line: quieted
    logging.getLogger("uvicorn.error").info("Started server process")  # routed through ours
    lines = err.getvalue().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [p["msg"] for p in parsed][0].startswith("hello https://acct.r2.cloudflarestorage.com/")
    assert parsed[0]["event_id"] == "evt_s"
    assert [p["logger"] for p in parsed] == ["fulfiller.test", "uvicorn.error"]
    assert SIGNATURE not in err.getvalue()


def test_json_timestamps_match_datetime_to_the_millisecond() -> None:
    # The formatter writes the time itself, rounding as datetime does; the line must not drift from datetime's.
    # One formatter for all, as in a server: it keeps the last second it wrote, and time may step back.
    formatter = JsonFormatter()
    for created in (0.0, 1.9995, 1_700_000_000.0004996, 1_700_000_059.9999996, 1_700_000_060.001,
                    1_700_000_060.9, 1_700_000_059.5, 4_102_444_799.999):
        rec = record("tick")
        rec.created = created
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert json.loads(formatter.format(rec))["ts"] == expected


def test_setup_logging_keeps_records_lean(restore_logging: None) -> None:
    # Nothing we write uses a record's thread, process or calling frame; gathering them costs every line.
    setup_logging("json", "INFO")
    assert not (logging.logThreads or logging.logProcesses or logging.logMultiprocessing or logging._srcfile)


@pytest.fixture
def block_log(tmp_path: Path) -> Iterator[tuple[Path, BlockHandler]]:
    """A BlockHandler on a real file, as on stderr in production (a file descriptor behind it)."""
    path = tmp_path / "stderr.log"
    with open(path, "w") as stderr:
        handler = BlockHandler(stderr, interval_s=3600)  # no timed flush unless a test asks for one
        handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
        try:
            yield path, handler
        finally:
            handler.close()


def emit(handler: logging.Handler, name: str, msg: str, level: int = logging.INFO) -> None:
    handler.handle(logging.LogRecord(name, level, __file__, 0, msg, None, None))


def test_delivery_lines_wait_and_go_out_in_order_with_the_next_other_line(
    block_log: tuple[Path, BlockHandler],
) -> None:
    path, handler = block_log
    emit(handler, "fulfiller.receiver", "delivery accepted 1")
    emit(handler, "fulfiller.receiver", "delivery accepted 2")
    assert path.read_text() == ""  # two write() calls saved
    emit(handler, "uvicorn.error", "Shutting down")
    assert path.read_text().splitlines() == [
        "fulfiller.receiver delivery accepted 1", "fulfiller.receiver delivery accepted 2", "uvicorn.error Shutting down",
    ]


def test_a_delivery_warning_is_written_at_once(block_log: tuple[Path, BlockHandler]) -> None:
    path, handler = block_log
    emit(handler, "fulfiller.receiver", "delivery accepted")
    emit(handler, "fulfiller.receiver", "delivery bad_signature", logging.WARNING)
    assert path.read_text().splitlines() == [
        "fulfiller.receiver delivery accepted", "fulfiller.receiver delivery bad_signature",
    ]


def test_waiting_delivery_lines_are_written_within_the_interval(block_log: tuple[Path, BlockHandler]) -> None:
    path, handler = block_log
    with open(path, "a") as stderr:
        timed = BlockHandler(stderr, interval_s=0.05)
        timed.setFormatter(handler.formatter)
        try:
            emit(timed, "fulfiller.receiver", "delivery accepted")
            wait_until(lambda: path.read_text() == "fulfiller.receiver delivery accepted\n", 5, "the timed flush")
        finally:
            timed.close()


class Writes(io.StringIO):
    """A stream that keeps each write() it is given, as a pipe sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_blocks_are_whole_lines_no_longer_than_a_pipe_keeps_whole() -> None:
    stream = Writes()
    handler = BlockHandler(stream, interval_s=3600)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    try:
        for i in range(200):
            emit(handler, "fulfiller.receiver", f"delivery accepted evt_{i:04d} " + "x" * (i % 97) + "é" * (i % 5))
        handler.flush()
    finally:
        handler.close()
    assert len(stream.writes) > 1
    assert all(w.endswith("\n") and len(w.encode()) <= select.PIPE_BUF for w in stream.writes)
    assert [line.split()[3] for line in stream.getvalue().splitlines()] == [f"evt_{i:04d}" for i in range(200)]


def test_setup_logging_leaves_its_choice_for_the_processes_it_starts(restore_logging: None) -> None:
    setup_logging("text", "WARNING")
    assert (os.environ["FULFILLER_LOG_FORMAT"], os.environ["FULFILLER_LOG_LEVEL"]) == ("text", "WARNING")


def test_closing_writes_what_waits(block_log: tuple[Path, BlockHandler]) -> None:
    path, handler = block_log
    emit(handler, "fulfiller.receiver", "delivery duplicate")
    handler.close()  # logging closes every handler at exit
    assert path.read_text() == "fulfiller.receiver delivery duplicate\n"


def test_fields_are_the_documented_set() -> None:
    assert {"event_id", "job_id", "status", "step", "http_status", "duration_ms", "reason", "client",
            "path"} <= set(FIELDS)


# --- a whole run through fulfiller serve --------------------------------------------------


def test_no_credential_reaches_the_log_of_a_real_run(tmp_path: Path) -> None:
    receiver_secret = "whsec_" + secrets.token_hex(16)
    admin_token = "adm_" + secrets.token_hex(16)
    masters = tmp_path / "masters"
    for code in ("LOG-OK", "LOG-403"):
        (masters / code / "v1" / "en").mkdir(parents=True)
        shutil.copyfile(MEDIA / "9x16.mp4", masters / code / "v1" / "en" / "9x16.mp4")
    config = {
        "receiver": {"secrets": [receiver_secret]},
        "admin": {"token": admin_token},
        "worker": {"allow_insecure_http": True, "allowed_upload_hosts": ["127.0.0.1"],
                   "allowed_callback_hosts": ["127.0.0.1"], "retry_base_s": 0.05, "retry_max_s": 0.2},
        "catalogs": {"local": {"type": "local", "root": str(masters)}},
        "routes": [{"codes": ["*"], "catalog": "local"}],
    }
    credentials: dict[str, str] = {"receiver secret": receiver_secret, "admin token": admin_token}

    with run_platform(tmp_path / "platform") as platform:
        # DEBUG: the libraries' own debug lines (httpcore's, for one) must not leak either.
        with FulfillerProcess(tmp_path / "serve", config, secret=receiver_secret, admin_token=admin_token,
                              env={"FULFILLER_LOG_LEVEL": "DEBUG"}) as proc:
            def event(code: str) -> tuple[dict[str, Any], str, str]:
                key = storage_key(code, "9x16")
                token = f"waitpoint_{secrets.token_hex(12)}"
                url = platform.presign(key)
                credentials[f"{code} upload signature"] = url.rsplit("X-Amz-Signature=", 1)[1]
                credentials[f"{code} callback token"] = token
                return source_requested(code, aspect="9x16", key=key, upload_url=url,
                                        callback_url=platform.callback_url(token)), key, token

            # Completed after a 503 on the upload and a 500 on the callback (both retried).
            ok, ok_key, ok_token = event("LOG-OK")
            platform.fail_uploads(1, status=503, key=ok_key)
            platform.fail_callbacks(1, status=500, token=ok_token)
            ok_job = proc.wait_for_job(proc.deliver(ok), timeout=TIMEOUT_S)
            assert ok_job["status"] == "completed", ok_job
            assert [a["http_status"] for a in attempts(ok_job, "upload")] == [503, 200]
            assert [a["http_status"] for a in attempts(ok_job, "callback")] == [500, 202]

            # Failed on a 403 (the pre-signed URL refused), then rerun by an operator.
            bad, bad_key, _ = event("LOG-403")
            platform.fail_uploads(1, status=403, key=bad_key, body="SignatureDoesNotMatch")
            bad_id = proc.deliver(bad)
            failed = proc.wait_for_job(bad_id, timeout=TIMEOUT_S)
            assert failed["status"] == "failed", failed
            assert proc.admin("POST", f"/admin/jobs/{bad_id}/rerun").status_code == 202
            assert proc.wait_for_job(bad_id, timeout=TIMEOUT_S)["status"] == "completed"

            # A signed request the platform's documentation does not allow: stored, its job invalid at once.
            invalid = event("LOG-KIND")[0]
            invalid["creative"]["kind"] = "hologram"
            invalid_job = proc.job(proc.deliver(invalid))
            assert invalid_job["status"] == "invalid"

            # Refused deliveries and admin calls with a wrong token.
            body = json.dumps(event("LOG-NONE")[0]).encode()
            headers = signed_headers(body, ["not-" + receiver_secret], topic="video.source_requested",
                                     event_id=f"evt_{uuid.uuid4().hex}")
            assert proc.http.post(f"{proc.base_url}/webhooks/outpost", content=body,
                                  headers=headers).status_code == 401
            assert proc.http.get(f"{proc.base_url}/admin/jobs",
                                 headers={"Authorization": f"Bearer {admin_token}x"}).status_code == 401
            assert proc.admin("GET", f"/admin/jobs/{bad_id}").status_code == 200
        log = proc.log_text()

    lines = [line for line in log.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any(p.get("job_id") == ok_job["id"] and p.get("event_id") == ok_job["event_id"] for p in parsed)
    assert any(p.get("step") == "upload" and p.get("http_status") == 503 for p in parsed)  # the run was logged
    assert any(p.get("outcome") == "bad_signature" for p in parsed)
    # What an operator reads: the invalid job, the refused delivery and every admin call, with who made it.
    [invalid_line] = [p for p in parsed if p.get("job_id") == invalid_job["id"] and p.get("status") == "invalid"]
    assert (invalid_line["level"], invalid_line["msg"], invalid_line["code"]) == ("warning", "job invalid", "LOG-KIND")
    assert invalid_line["event_id"] == invalid_job["event_id"] and "kind" in invalid_line["reason"]
    assert [(p["level"], p["reason"], p["http_status"], p["client"]) for p in parsed
            if p["msg"].startswith("delivery refused")] == [("warning", "bad_signature", 401, "127.0.0.1")]
    assert [(p["level"], p["msg"], p.get("job_id"), p.get("outcome"), p["client"], p.get("path")) for p in parsed
            if p["logger"] == "fulfiller.admin"] == [
        ("info", "admin rerun queued", bad_id, "queued", "127.0.0.1", None),
        ("warning", "admin token refused", None, None, "127.0.0.1", "/admin/jobs"),
    ]
    assert any(p["level"] == "debug" for p in parsed)
    leaks = {what: value for what, value in credentials.items() if value in log}
    assert not leaks, f"credentials in the log: {sorted(leaks)}"
