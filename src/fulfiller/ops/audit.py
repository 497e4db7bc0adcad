"""``fulfiller audit``: what a creative team runs before a launch.

For each creative in a catalog: which aspects the platform can get, which files
lie about their aspect, which cannot be read, which aspects have two
candidates. The walk and the measuring are ``audit_walk``'s, the verdicts and
their table and JSON ``audit_report``'s; here the command picks the catalogs,
shows progress on stderr (a catalog may hold thousands of files) and turns the
findings into an exit status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

from fulfiller.config import Config
from fulfiller.delivery.resolve import Catalogs
from fulfiller.ops.audit_report import CatalogReport, render_json, render_table
from fulfiller.ops.audit_walk import Calls, Walk

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2
# Listings and measurements in flight at once: well under Drive's per-user request rate.
CONCURRENCY = 4
# Tries of one listing or range read while the catalog answers "try later", with the worker's backoff.
TRIES = 4
# Without a terminal to redraw a line on, a progress line at most this often.
PROGRESS_EVERY_S = 5.0


class Progress:
    """One line on stderr: redrawn in place on a terminal, else printed now and then (and at the end)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic):
        self._stream, self._clock = stream, clock
        self._tty = stream.isatty()
        self._last_at: float | None = None
        self._line = ""

    def show(self, walk: Walk) -> None:
        self._line = (f"audit {walk.catalog.name}: {walk.folders} folder(s) listed, "
                      f"{walk.measured}/{walk.files} file(s) measured")
        if self._tty:
            self._stream.write(f"\r{self._line}\x1b[K")
            self._stream.flush()
        elif self._last_at is None or self._clock() - self._last_at >= PROGRESS_EVERY_S:
            self._print()

    def _print(self) -> None:
        self._stream.write(f"{self._line}\n")
        self._stream.flush()
        self._last_at = self._clock()

    def done(self) -> None:
        """The last count, on a line of its own."""
        if self._tty and self._line:
            self._stream.write("\n")
            self._stream.flush()
        elif self._line:
            self._print()
        self._line = ""


async def audit(config: Config, catalog: str | None, code_glob: str | None, as_json: bool,
                out: Callable[[str], None], err: TextIO) -> int:
    """Walk ``catalog`` (every configured one when None) and report; 0 when nothing is wrong, 1 when
    something is, 2 for a catalog name the config does not have."""
    if catalog is not None and catalog not in config.catalogs:
        err.write(f"audit: no catalog named {catalog!r}; configured: {', '.join(config.catalogs)}\n")
        return EXIT_USAGE
    names = [catalog] if catalog is not None else list(config.catalogs)
    catalogs = Catalogs(config)
    calls = Calls(config.worker, CONCURRENCY, TRIES)
    reports = []
    try:
        for name in names:
            progress = Progress(err)
            walk = Walk(catalogs.get(name), calls, code_glob, progress.show)
            try:
                await walk.run()
            finally:
                progress.done()
            reports.append(CatalogReport.build(name, walk.catalog.layout, walk.checked, walk.errors))
    finally:
        await catalogs.aclose()
    out(render_json(reports) if as_json else render_table(reports))
    return EXIT_PROBLEMS if any(report.problem_count for report in reports) else EXIT_OK
