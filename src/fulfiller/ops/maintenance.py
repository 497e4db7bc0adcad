"""Keeping a state in shape: retention (every ``serve`` prunes hourly; ``fulfiller prune`` by hand) and
``fulfiller backup``.

Retention runs in every ``serve``, with or without its workers: every deployment has one (the receiver),
a SQLite state has exactly one, and its ``/metrics`` is where ``fulfiller_pruned_total`` is read. A fleet's
processes take turns (``Store.prune``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from fulfiller.config import Config
from fulfiller.metrics import Metrics
from fulfiller.store import Store, open_store
from fulfiller.store.base import Pruned
from fulfiller.store.sqlite import SQLiteStore

log = logging.getLogger("fulfiller.retention")

DAY_S = 86400.0
# How often a serving process prunes: often enough that each round is a few batches, seldom enough to cost nothing.
PRUNE_EVERY_S = 3600.0


async def prune_hourly(config: Config, store: Store, metrics: Metrics, every_s: float = PRUNE_EVERY_S) -> None:
    """Apply ``retention.keep_days`` at once and then every ``every_s``, until cancelled (nothing when it is 0).

    A round another process runs is skipped; a round that fails is logged and tried again next time.
    """
    keep_days = config.retention.keep_days
    if not keep_days:
        return
    while True:
        try:
            pruned = await store.prune(keep_days * DAY_S)
        except Exception as exc:
            log.error("pruning failed: %s", exc)
        else:
            if pruned is not None:
                metrics.count_pruned(pruned)
                if pruned.jobs or pruned.events:
                    log.info("pruned %d job(s) and %d event(s) older than %g days", pruned.jobs, pruned.events,
                             keep_days)
        await asyncio.sleep(every_s)


def prune(config: Config, older_than_days: float | None, dry_run: bool, out: Callable[[str], None]) -> int:
    """``fulfiller prune``: delete (or, ``dry_run``, count) what is older than ``older_than_days`` (default:
    ``retention.keep_days``) as retention would; the exit code. 0 days from the config means retention is off."""
    days = config.retention.keep_days if older_than_days is None else older_than_days
    if older_than_days is None and not days:
        out("retention.keep_days is 0: retention is off and nothing is deleted (--older-than DAYS prunes anyway)")
        return 0
    pruned = asyncio.run(_prune(config.state, days * DAY_S, dry_run))
    if pruned is None:
        out("another process is pruning this state now; nothing deleted (try again once it is done)")
        return 1
    verb = "would delete" if dry_run else "deleted"
    out(f"{verb} {pruned.jobs} job(s) and {pruned.events} event(s) older than {days:g} days")
    return 0


async def _prune(url: str, older_than_s: float, dry_run: bool) -> Pruned | None:
    store = open_store(url)
    await store.open()
    try:
        return await store.prune(older_than_s, dry_run=dry_run)
    finally:
        await store.close()


def backup(config: Config, to: str, out: Callable[[str], None]) -> int:
    """``fulfiller backup``: copy a SQLite state into ``to`` while ``serve`` runs, check that the copy opens
    whole, and say how many jobs it holds; the exit code. PostgreSQL has its own tool (exit 2)."""
    store = open_store(config.state)  # not serving: the running serve keeps its lock
    if not isinstance(store, SQLiteStore):
        out("the state is PostgreSQL: back it up with pg_dump (e.g. pg_dump --format=custom --file=FILE URL)")
        return 2
    source, target = Path(store.path), Path(to)
    if not source.is_file():
        out(f"no state to back up: {source} does not exist")
        return 1
    if target.exists() and target.resolve() == source.resolve():
        out(f"{to} is the state itself: give another file")
        return 2
    if not target.parent.is_dir():
        out(f"{target.parent} is not a directory")
        return 2
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        store.backup(str(partial))
        problem, jobs = _check_copy(partial)
        if problem:
            out(f"the copy does not check out ({problem}); {to} is left as it was")
            return 1
        os.replace(partial, target)  # a backup that fails halfway never replaces a good one
        _sync_folder(target.parent)
    except (sqlite3.Error, OSError) as exc:
        out(f"backup failed: {exc}; {to} is left as it was")
        return 1
    finally:
        partial.unlink(missing_ok=True)
    out(f"backed up {source} to {to}: {jobs} job(s), integrity ok")
    return 0


def _check_copy(path: Path) -> tuple[str | None, int]:
    """What is wrong with the copy at ``path`` (None when its integrity check passes), and its jobs."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if found != ["ok"]:
            return "; ".join(found[:5]), 0
        return None, int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
    finally:
        conn.close()


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the copy's own pages were synced as SQLite wrote them)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
