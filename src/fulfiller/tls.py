"""The certificate and key ``serve`` answers HTTPS with, checked before the server starts.

uvicorn loads the same two PEM files as it starts, and a pair it cannot use stops it with a
traceback. Here each problem is a config error naming its key (``server.tls_cert_file`` or
``server.tls_key_file``), and ``check-config`` finds it before a deployment does.
"""

from __future__ import annotations

import ssl

from fulfiller.config import ConfigError, ServerConfig

CERT_KEY, KEY_KEY = "server.tls_cert_file", "server.tls_key_file"


class _Encrypted(Exception):
    """A key that asks for a passphrase: serve has none to give."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt for the passphrase on the terminal and wait.
    raise _Encrypted


def check_tls(server: ServerConfig) -> None:
    """Raise ConfigError naming each TLS file serve could not answer HTTPS with; nothing when TLS is off."""
    cert, key = server.tls_cert_file, server.tls_key_file
    if not (cert and key):
        return
    unreadable = [(name, problem) for name, path in ((CERT_KEY, cert), (KEY_KEY, key))
                  if (problem := _unreadable(path))]
    if unreadable:
        raise ConfigError(unreadable)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise ConfigError([(CERT_KEY, f"{cert} holds no PEM certificate")]) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError([(KEY_KEY, f"{key} is encrypted with a passphrase; serve needs it unencrypted "
                                     "(readable by its own user only)")]) from None
    except ssl.SSLError as exc:
        problem = (f"{key} does not match the certificate in {cert}" if exc.reason == "KEY_VALUES_MISMATCH"
                   else f"{key} holds no PEM private key")
        raise ConfigError([(KEY_KEY, problem)]) from None


def _unreadable(path: str) -> str | None:
    try:
        with open(path, "rb"):
            return None
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
