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


def moov_at_end(size: int, name: str = "9x16.mp4") -> bytes:
    """A ``size``-byte MP4 whose ``moov`` comes last, past any first chunk: ``name``'s boxes with its ``mdat``
    padded (the sample offsets no longer point at the frames; the picture's size and matrix stay true)."""
    data = media(name)
    boxes, at = {}, 0
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        boxes[data[at + 4:at + 8]] = data[at:at + length]
        at += length
    head, moov = boxes[b"ftyp"], boxes[b"moov"]
    body = size - len(head) - len(moov) - 8
    return head + (body + 8).to_bytes(4, "big") + b"mdat" + bytes(body) + moov
