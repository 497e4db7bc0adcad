"""What ``serve`` and ``worker`` check before they start, beyond the file's own rules: a state they can open,
whose schema is not newer than this build's.

``check-config`` runs the same check, so an unusable state URL or SQLite path is found before a
deployment starts, and ``serve`` refuses it as a config error naming ``state`` rather than with a
traceback. Nothing here writes: the check reads what the store would use and tries a temporary
file where SQLite would create its own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fulfiller.config import ConfigError
from fulfiller.store import Store, StoreUnavailable, open_store
from fulfiller.store.schema import refuse_newer
from fulfiller.store.sql import SqlStore
from fulfiller.store.sqlite import SQLiteStore

SQLITE_HEADER = b"SQLite format 3\x00"


def check_state(url: str) -> list[str]:
    """Raise ConfigError naming ``state`` when the store could not be opened; notes for the operator otherwise."""
    try:
        store = open_store(url)
    except ValueError as exc:
        raise ConfigError([("state", f"not a usable state URL: {str(exc).strip()}")]) from None
    if isinstance(store, SQLiteStore):
        path = Path(store.path).absolute()
        problem = sqlite_file_problem(path)
        if problem:
            raise ConfigError([("state", problem)])
        if not path.parent.is_dir():
            return [f"state: {path.parent} does not exist yet; serve creates it"]
    refuse_newer_schema(store)
    return []


def sqlite_file_problem(path: Path) -> str | None:
    """Why SQLite could not keep its database at ``path``, or None.

    The store creates missing folders, and SQLite keeps its ``-wal`` and ``-shm`` files beside the
    database: the folder (or the nearest one that exists) must take new files.
    """
    if path.exists():
        if path.is_dir():
            return f"{path} is a directory, not a database file"
        if not path.is_file():  # a pipe or a device: opening it could block, and SQLite could not use it
            return f"{path} is not a regular file"
        try:
            with open(path, "r+b") as f:
                head = f.read(len(SQLITE_HEADER))
        except OSError as exc:
            return f"cannot open {path} for reading and writing: {exc.strerror}"
        if head and head != SQLITE_HEADER:
            return f"{path} is not a SQLite database"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a directory, so {path} cannot be created"
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as exc:
        return f"cannot create files in {folder} (SQLite keeps its journal beside the database): {exc.strerror}"
    return None


def refuse_newer_schema(store: Store) -> None:
    """Raise SchemaTooNew (a ConfigError: exit 2) when ``store`` (not opened) holds a schema newer than this
    build's, reading only: ``serve`` refuses it before its server starts (the store's own start refuses it
    too, but by then a failure is the server's startup failure, exit 3). A state not there yet, or not
    reachable now, is left to the store's start."""
    if not isinstance(store, SqlStore) or (isinstance(store, SQLiteStore) and not Path(store.path).is_file()):
        return
    try:
        conn = store.connect()
    except StoreUnavailable:
        return
    try:
        refuse_newer(conn.cursor(), store.dialect)
    finally:
        conn.close()
