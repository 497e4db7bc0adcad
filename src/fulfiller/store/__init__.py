"""Durable state. ``open_store`` picks the backend from the ``state`` URL."""

from __future__ import annotations

from fulfiller.store.base import IncomingEvent, Stats, Store, StoreUnavailable


def open_store(url: str, *, serving: bool = False) -> Store:
    """A Store for ``sqlite:///PATH`` or ``postgresql://...`` (not yet opened).

    ``serving``: for ``serve`` and ``worker``, which own a SQLite file (``StateLocked`` when another
    process does); commands that only read or requeue share it. A fleet's PostgreSQL has no owner.
    """
    if url.startswith("sqlite:///"):
        from fulfiller.store.sqlite import SQLiteStore

        return SQLiteStore(url, serving=serving)
    if url.startswith(("postgresql://", "postgres://")):
        from fulfiller.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported state URL scheme: {url.split(':', 1)[0]}")


__all__ = ["IncomingEvent", "Stats", "Store", "StoreUnavailable", "open_store"]
