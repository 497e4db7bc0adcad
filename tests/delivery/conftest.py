"""Peers the transfer tests share: the platform double's upload URLs, and an uploader to reach them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fulfiller.delivery.transfer import Uploader
from support.platform import PlatformDouble, run_platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformDouble]:
    with run_platform(tmp_path_factory.mktemp("platform")) as double:
        yield double


@pytest.fixture
def uploader() -> Iterator[Uploader]:
    up = Uploader(timeout_s=5.0, max_connections=4)
    yield up
    up.close()
