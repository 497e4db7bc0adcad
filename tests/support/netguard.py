"""No network in tests: any connection or name lookup beyond loopback fails loudly.

A test that passes only because it reached a real service (Google's discovery
document, a token endpoint) would pass here for the wrong reason and fail in CI.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class NetworkBlocked(OSError):
    """A test tried to leave the machine."""


def _check(host: Any) -> None:
    if host not in LOOPBACK:
        raise NetworkBlocked(f"tests may not reach {host!r}: only loopback is allowed")


def block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch socket connects and lookups so only loopback (and Unix sockets) get through."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address[0])
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _check(address[0])
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            _check(host.decode() if isinstance(host, bytes) else host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
