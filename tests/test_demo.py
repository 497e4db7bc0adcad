"""`fulfiller demo` on a fresh install: no cloud account, no network, a readable story."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_the_whole_loop_and_tells_what_happened() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fulfiller.cli", "demo"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("-> HTTP 202") == 3
    assert out.count(": COMPLETED") == 2
    assert out.count(": SKIPPED") == 1
    # The AFS feed request takes the preferred 4x5 (a QuickTime), reported by its real type.
    assert '"aspectRatio": "4x5", "extension": "mov"' in out
    assert '{"skip": true, "reason": "no_match:acceptedAspects=[9x16]"}' in out
    assert "All three ended as expected" in out
    # Server logs stay out of the story unless asked for.
    assert "Uvicorn running" not in proc.stderr
