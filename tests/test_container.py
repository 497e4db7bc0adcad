"""The container image, built from the ``Dockerfile`` and run as an operator runs it.

``scripts/container-test.sh`` does the work (it installs Docker from Debian and starts an engine when
none runs, builds the image, and checks it against a local platform stand-in: healthy through its own
HEALTHCHECK, an event delivered end to end, a read-only root, SIGTERM during a held upload re-queues the
job for a second container, a non-root process, the size over its base); this test makes it part of
the suite, so that the one test command covers the image too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A cold run installs Docker, bootstraps a base and builds without a cache: a few minutes.
TIMEOUT_S = 1200


def test_the_image_keeps_the_container_promises() -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "container-test.sh")], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    print(output[-2000:])  # the size and timings, shown with -s or on failure
