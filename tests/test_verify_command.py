"""``fulfiller verify``: a captured delivery in, the reason and the fix out; exit 0 verifies, 1 not, 2 unusable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fulfiller.intake.signing import sign_outpost
from support.servers import TEST_SECRET, fulfiller_command, write_config

NOW = 1_700_000_000
BODY = b'{"projectId":"p-1","code":"ACME-123"}'


def verify(tmp_path: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    config = config or write_config(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    return subprocess.run([*fulfiller_command(), "verify", "--config", str(config), "--now", str(NOW), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def curl_capture(signature: str) -> str:
    return "\n".join([
        "*   Trying 127.0.0.1:8080...",
        "> POST /webhooks/outpost HTTP/1.1",
        "> Host: localhost:8080",
        "> Content-Type: application/json",
        f"> x-outpost-signature: {signature}",
        f"> Content-Length: {len(BODY)}",
        ">",
        f"}} [{len(BODY)} bytes data]",
        "< HTTP/1.1 401 Unauthorized",
        "<",
        BODY.decode(),
    ]) + "\n"


def test_a_good_curl_capture_verifies_and_exits_0(tmp_path: Path) -> None:
    capture = tmp_path / "curl.txt"
    capture.write_text(curl_capture(sign_outpost(BODY, [TEST_SECRET], timestamp=NOW)))
    done = verify(tmp_path, "--request", str(capture))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["ok", "- the signature verifies with receiver.secrets[0]"]


def test_a_capture_signed_with_the_secret_s_whsec_prefix_says_so_and_exits_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'f.db'}", secret=TEST_SECRET.removeprefix("whsec_"))
    capture = tmp_path / "curl.txt"
    signature = sign_outpost(BODY, [TEST_SECRET], timestamp=NOW)
    capture.write_text(curl_capture(signature))
    done = verify(tmp_path, "--request", str(capture), config=config)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == "secret_variant"
    assert "receiver.secrets[0] verifies when its whsec_ prefix is kept" in done.stdout
    assert TEST_SECRET.removeprefix("whsec_") not in done.stdout and signature[2:] not in done.stdout


def test_headers_and_body_files_re_serialised_by_a_proxy_say_body_modified(tmp_path: Path) -> None:
    headers, body = tmp_path / "headers.txt", tmp_path / "body.json"
    headers.write_text(f"X-Outpost-Event-Id: evt_1\nX-Outpost-Signature: {sign_outpost(BODY, [TEST_SECRET])}\n")
    body.write_bytes(json.dumps(json.loads(BODY), indent=2).encode())
    done = verify(tmp_path, "--headers", str(headers), "--body", str(body))
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines()[0] == "body_modified"


def test_a_plain_http_capture_signed_by_someone_else_says_wrong_secret(tmp_path: Path) -> None:
    capture = tmp_path / "request.http"
    capture.write_bytes(b"POST /webhooks/outpost HTTP/1.1\r\nX-Outpost-Signature: %s\r\n\r\n"
                        % sign_outpost(BODY, ["whsec_someone-else"]).encode() + BODY)
    done = verify(tmp_path, "--request", str(capture))
    assert done.returncode == 1 and done.stdout.splitlines()[0] == "wrong_secret", done.stdout + done.stderr


def test_unusable_input_exits_2_without_quoting_it(tmp_path: Path) -> None:
    headers, body = tmp_path / "headers.txt", tmp_path / "body.json"
    headers.write_text("X-Outpost-Event-Id: evt_1\nv0=deadbeefdeadbeef\n")
    body.write_bytes(BODY)
    garbled = verify(tmp_path, "--headers", str(headers), "--body", str(body))
    assert garbled.returncode == 2 and "line 2" in garbled.stderr and "deadbeef" not in garbled.stderr
    half = verify(tmp_path, "--headers", str(headers))
    assert half.returncode == 2 and "--headers FILE and --body FILE" in half.stderr
    missing = verify(tmp_path, "--request", str(tmp_path / "nowhere.txt"))
    assert missing.returncode == 2 and "unusable input" in missing.stderr
    assert "Traceback" not in garbled.stderr + half.stderr + missing.stderr


def test_a_config_without_secrets_exits_2_naming_receiver_secrets(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    settings = json.loads(config.read_text())
    settings["receiver"]["secrets"] = ["${NO_SUCH_SECRET_VARIABLE:-}"]
    config.write_text(json.dumps(settings))
    capture = tmp_path / "curl.txt"
    capture.write_text(curl_capture(sign_outpost(BODY, [TEST_SECRET])))
    done = verify(tmp_path, "--request", str(capture), config=config)
    assert done.returncode == 2 and "receiver.secrets" in done.stderr, done.stderr
