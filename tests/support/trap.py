"""A TCP listener that nobody should ever reach: it counts every connection made to it.

Tests point hostile URLs at it (a port outside every allow-list): any
connection means something was sent where the allow-list forbids. It answers
nothing and closes each connection at once, so a sender that does reach it
fails fast instead of waiting on a reply.

    with Trap() as trap:
        url = f"http://127.0.0.1:{trap.port}/"
        ...
        assert trap.connections == 0, trap.peers
"""

from __future__ import annotations

import socket
import threading


class Trap:
    """A listening socket on 127.0.0.1 (a free port) whose accept thread counts connections."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._peers: list[tuple[str, int]] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="trap")

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:  # the socket was closed: the trap is shutting down
                return
            with self._lock:
                self._peers.append(peer)
            conn.close()

    @property
    def connections(self) -> int:
        """How many connections the trap has accepted so far."""
        with self._lock:
            return len(self._peers)

    @property
    def peers(self) -> list[tuple[str, int]]:
        """The client address of each connection, in order."""
        with self._lock:
            return list(self._peers)

    def __enter__(self) -> Trap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        # shutdown wakes the blocked accept() on Linux; close alone may not.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)


__all__ = ["Trap"]
