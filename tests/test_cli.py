"""The ``fulfiller`` command itself: its version, and the start-up line that carries it."""

from __future__ import annotations

import subprocess
from importlib.metadata import version as distribution_version
from pathlib import Path

import fulfiller
from support.servers import ServeProcess, fulfiller_command, write_config


def test_version_is_the_installed_distribution_s() -> None:
    installed = distribution_version("video-source-fulfiller")
    assert fulfiller.version() == fulfiller.__version__ == installed
    done = subprocess.run([*fulfiller_command(), "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fulfiller {installed}"


def test_serve_logs_its_version_when_it_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    serve = ServeProcess(config, tmp_path / "serve.log", extra_args=["--log-format", "text"]).start()
    try:
        assert f"fulfiller {fulfiller.version()} starting: serve" in serve.log_containing("starting: serve")
    finally:
        serve.stop()


def test_a_worker_on_a_sqlite_file_that_serve_holds_exits_2_naming_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    serve = ServeProcess(config, tmp_path / "serve.log").start()
    try:
        done = subprocess.run([*fulfiller_command(), "worker", "--config", str(config)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert serve.proc is not None
        assert f"pid {serve.proc.pid}" in done.stderr and "Traceback" not in done.stderr
    finally:
        serve.stop()


def test_prune_refuses_a_negative_or_non_numeric_age_before_it_opens_anything(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'f.db'}")
    for days in ("-1", "soon", "nan"):
        done = subprocess.run([*fulfiller_command(), "prune", "--config", str(config), f"--older-than={days}"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2, done.stderr
        assert f"argument --older-than: {days!r} is not a number of days (0 or more)" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "f.db").exists()


def test_prune_and_backup_say_their_options() -> None:
    for command, options in (("prune", ("--older-than DAYS", "--dry-run")), ("backup", ("--to FILE",))):
        usage = subprocess.run([*fulfiller_command(), command, "--help"], capture_output=True, text=True,
                               timeout=60, check=False)
        assert usage.returncode == 0 and all(option in usage.stdout for option in options), usage.stdout
