"""Creative codes no catalog can hold, end to end through a real ``fulfiller serve``.

A code that cannot be one path segment (a 300-character segment the file
system would refuse, a ``/`` that would walk elsewhere) can match nothing: the
platform gets its ``no_match`` skip at the first try, not after an hour of
retries taken for a catalog outage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from support.fulfiller_proc import FulfillerProcess, attempts, fast_worker
from support.masters import MP4
from support.platform import PlatformDouble, new_token, run_platform, source_requested, storage_key

# Backoff as slow as a real deployment's, so a job that retried would still be open at the deadline; the
# skip must come from the first try (which takes well under a second).
RETRY_BASE_S = 60
DEADLINE_S = 15


@dataclass
class Stack:
    proc: FulfillerProcess
    platform: PlatformDouble
    masters: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("hostile-catalogs")
    masters = root / "masters"
    masters.mkdir()
    with run_platform(root / "platform") as platform:
        platform_host = f"127.0.0.1:{urlsplit(platform.base_url).port}"
        config = {
            "server": {"host": "127.0.0.1"},
            "worker": fast_worker([platform_host], [platform_host], retry_base_s=RETRY_BASE_S,
                                  retry_max_s=RETRY_BASE_S * 2),
            "catalogs": {"masters-local": {"type": "local", "root": str(masters)}},
            "routes": [{"codes": ["*"], "catalog": "masters-local"}],
        }
        with FulfillerProcess(root / "fulfiller", config) as proc:
            yield Stack(proc, platform, masters)


@pytest.mark.parametrize("tail", ["9" * 296, "A/B"], ids=["300-character segment", "slash"])
def test_a_code_no_catalog_can_hold_is_skipped_at_the_first_try(stack: Stack, tail: str) -> None:
    code = f"LOC-{uuid.uuid4().hex[:8]}-{tail}"[:300]
    if "/" in code:
        # A master where the code would lead if its "/" split it: a skip proves nobody looked there.
        planted = stack.masters.joinpath(*code.split("/"), "v1", "en", "9x16.mp4")
        planted.parent.mkdir(parents=True)
        planted.write_bytes(MP4)
    key, token = storage_key(f"LOC-{uuid.uuid4().hex[:8]}", "9x16"), new_token()
    event = source_requested(code, aspect="9x16", key=key, upload_url=stack.platform.presign(key),
                             callback_url=stack.platform.callback_url(token))

    job = stack.proc.wait_for_job(stack.proc.deliver(event), timeout=DEADLINE_S)

    assert (job["status"], job["skip_reason"]) == ("skipped", "no_match:aspect=9x16"), job
    assert len(attempts(job, "resolve")) == 1
    [callback] = stack.platform.callbacks(token)
    assert callback.body == {"skip": True, "reason": "no_match:aspect=9x16"}
    assert stack.platform.uploads(key) == []
    warnings = [line["msg"] for line in stack.proc.serve.log_lines()
                if line.get("job_id") == job["id"] and line.get("level") == "warning"]
    assert warnings == []
