"""HTTPS straight from ``fulfiller serve``, and the client address behind a proxy it trusts.

A real ``fulfiller serve`` answers HTTPS with a self-signed certificate made here, and the
client verifies it against that certificate; plain HTTP on the same port gets no answer.
TLS files it could not use stop ``serve`` and ``check-config`` with exit 2 naming the key.
``X-Forwarded-For`` sets the client in the log lines only when it comes from a proxy in
``server.forwarded_allow_ips``: never by uvicorn's defaults or its environment variable.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.servers import TEST_ADMIN_TOKEN, ServeProcess, fulfiller_command, write_config

CLIENT_BEHIND_PROXY = "203.0.113.7"


def self_signed(directory: Path, name: str = "server", *,
                passphrase: bytes | None = None) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, valid for a day, and its key: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           encryption))
    return cert_path, key_path


def config_with_server(directory: Path, **server: Any) -> Path:
    """The tests' minimal config with these ``server:`` settings."""
    path = write_config(directory, f"sqlite:///{directory / 'f.db'}")
    config = json.loads(path.read_text())
    config["server"] = server
    path.write_text(json.dumps(config))
    return path


class HttpsServe(ServeProcess):
    """``fulfiller serve`` answering HTTPS; its readiness poll (a default httpx client) trusts SSL_CERT_FILE."""

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_serve_answers_https_with_the_configured_certificate_and_no_plain_http(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    other_cert, _ = self_signed(tmp_path, "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    serve = HttpsServe(config_with_server(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key)),
                       tmp_path / "serve.log").start()
    try:
        with httpx.Client(verify=trusting(cert), timeout=10) as client:
            assert client.get(f"{serve.base_url}/healthz").status_code == 200
            refused = client.post(f"{serve.base_url}/webhooks/outpost", content=b"{}",
                                  headers={"x-outpost-signature": "v0=00"})
            assert refused.status_code == 401  # the receiver itself, over TLS
        with httpx.Client(verify=trusting(other_cert), timeout=10) as stranger:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                stranger.get(f"{serve.base_url}/healthz")
        with httpx.Client(timeout=10) as plain:
            with pytest.raises(httpx.TransportError):
                plain.get(f"http://127.0.0.1:{serve.port}/healthz")
        assert f"https://127.0.0.1:{serve.port}" in serve.log()
    finally:
        serve.stop()


def tls_problems(tmp: Path) -> dict[str, tuple[dict[str, str], str, str]]:
    """Each TLS pair serve could not use: its ``server:`` settings, the key named and the words said."""
    cert, key = self_signed(tmp)
    _, other_key = self_signed(tmp, "other")
    _, locked_key = self_signed(tmp, "locked", passphrase=b"correct horse")
    (tmp / "notes.txt").write_text("not PEM")
    (tmp / "certs").mkdir()
    return {
        "no cert file": ({"tls_cert_file": f"{tmp}/absent.crt", "tls_key_file": str(key)},
                         "server.tls_cert_file", f"cannot read {tmp}/absent.crt: No such file or directory"),
        "no key file": ({"tls_cert_file": str(cert), "tls_key_file": f"{tmp}/absent.key"},
                        "server.tls_key_file", f"cannot read {tmp}/absent.key: No such file or directory"),
        "a folder": ({"tls_cert_file": f"{tmp}/certs", "tls_key_file": str(key)},
                     "server.tls_cert_file", f"cannot read {tmp}/certs: Is a directory"),
        "not a certificate": ({"tls_cert_file": str(key), "tls_key_file": str(key)},
                              "server.tls_cert_file", f"{key} holds no PEM certificate"),
        "not a key": ({"tls_cert_file": str(cert), "tls_key_file": f"{tmp}/notes.txt"},
                      "server.tls_key_file", f"{tmp}/notes.txt holds no PEM private key"),
        "another certificate's key": ({"tls_cert_file": str(cert), "tls_key_file": str(other_key)},
                                      "server.tls_key_file", f"{other_key} does not match the certificate in {cert}"),
        "a passphrase": ({"tls_cert_file": str(cert), "tls_key_file": str(locked_key)},
                         "server.tls_key_file", f"{locked_key} is encrypted with a passphrase"),
    }


@pytest.mark.parametrize("problem", ["no cert file", "no key file", "a folder", "not a certificate", "not a key",
                                     "another certificate's key", "a passphrase"])
def test_check_config_and_serve_refuse_tls_files_they_cannot_use_naming_the_key(tmp_path: Path,
                                                                                 problem: str) -> None:
    server, named, says = tls_problems(tmp_path)[problem]
    path = config_with_server(tmp_path, **server)
    for command in ("check-config", "serve"):
        done = subprocess.run([*fulfiller_command(), command, "--config", str(path)], capture_output=True,
                              text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        assert done.returncode == 2, (command, done.stderr)
        [line] = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("server.")]
        assert line.startswith(f"{named}: {says}"), (command, done.stderr)
        assert "Traceback" not in done.stderr


def test_check_config_takes_a_usable_tls_pair(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    path = config_with_server(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key))
    done = subprocess.run([*fulfiller_command(), "check-config", "--config", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("server, env, client", [
    ({"forwarded_allow_ips": "127.0.0.1"}, {}, CLIENT_BEHIND_PROXY),
    ({"forwarded_allow_ips": "127.0.0.1"}, {"FORWARDED_ALLOW_IPS": "10.0.0.1"}, CLIENT_BEHIND_PROXY),
    ({}, {}, "127.0.0.1"),
    ({}, {"FORWARDED_ALLOW_IPS": "*"}, "127.0.0.1"),
    ({"forwarded_allow_ips": "10.0.0.1"}, {"FORWARDED_ALLOW_IPS": "*"}, "127.0.0.1"),
], ids=["trusted proxy", "trusted proxy, env var another", "no setting", "no setting, env var *",
        "another proxy, env var *"])
def test_the_logged_client_is_the_forwarded_one_only_behind_a_configured_proxy(
        tmp_path: Path, server: dict[str, str], env: dict[str, str], client: str) -> None:
    serve = ServeProcess(config_with_server(tmp_path, **server), tmp_path / "serve.log",
                         env={**env, "FULFILLER_LOG_FORMAT": "json"})
    if "FORWARDED_ALLOW_IPS" not in env:
        serve.env.pop("FORWARDED_ALLOW_IPS", None)
    forwarded = {"X-Forwarded-For": CLIENT_BEHIND_PROXY, "X-Forwarded-Proto": "https"}
    with serve, httpx.Client(timeout=10) as http:
        assert http.post(f"{serve.base_url}/webhooks/outpost", content=b"{}",
                         headers={**forwarded, "x-outpost-signature": "v0=00"}).status_code == 401
        assert http.get(f"{serve.base_url}/admin/jobs",
                        headers={**forwarded, "Authorization": f"Bearer {TEST_ADMIN_TOKEN}x"}).status_code == 401
        serve.log_containing("admin token refused")
        serve.log_containing("delivery refused")
        logged = {line["msg"].split(":")[0]: line.get("client") for line in serve.log_lines()
                  if line["msg"].startswith(("delivery refused", "admin token refused"))}
    assert logged == {"delivery refused": client, "admin token refused": client}

