"""What a master really is, judged by its first bytes rather than its file name.

Operators misname files (a QuickTime saved as ``.mp4``); the platform needs the
true container in ``Content-Type`` and the callback's ``extension``, so we ask
libmagic about the head of the file.
"""

from __future__ import annotations

import threading

import magic

from fulfiller.media import MIME_TYPES

# Every container we accept is recognised within its first 32 bytes; 8 KiB
# leaves room for formats whose signature sits behind a header.
HEAD_BYTES = 8192

_lock = threading.Lock()
_magic: magic.Magic | None = None


def _detector() -> magic.Magic:
    # One shared handle: loading the magic database costs milliseconds per
    # call. magic.Magic serialises its own calls; this lock only guards creation
    # (the module-level magic.from_buffer() creates its handle without one).
    global _magic
    with _lock:
        if _magic is None:
            _magic = magic.Magic(mime=True)
        return _magic


def sniff(head: bytes) -> str:
    """The MIME type libmagic reports for ``head`` (e.g. ``video/mp4``, ``text/plain``)."""
    return _detector().from_buffer(head)


def classify(mime: str) -> tuple[str, str] | None:
    """``(kind, extension)`` for a MIME type the platform accepts, else None."""
    return MIME_TYPES.get(mime)
