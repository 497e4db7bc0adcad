"""The sample masters in tests/media, and what tests look them up by or check them against."""

from __future__ import annotations

import hashlib
from pathlib import Path

MEDIA = Path(__file__).resolve().parent.parent / "media"
MP4 = (MEDIA / "9x16.mp4").read_bytes()
# The fields a catalog's layout is filled from, as the resolver passes them (read, never changed).
FIELDS = {
    "project": "hearty",
    "project_id": "p_42",
    "code": "HRT-001",
    "variation": 2,
    "locale": "en_US",
    "aspect": "9x16",
    "kind": "video",
}


def media(name: str) -> bytes:
    """The bytes of tests/media/``name``."""
    return (MEDIA / name).read_bytes()


def sha256(data: bytes) -> str:
    """``data``'s hash as the callback's ``contentHash`` carries it."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
