"""Media kinds, the file extensions each accepts, and the MIME types that name them.

Pure data: the platform accepts these containers, and these are the names we
report back in the callback's ``extension`` field.
"""

from __future__ import annotations

# Order is the deterministic preference when one stem exists with several extensions.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "video": ("mp4", "mov", "webm", "mkv"),
    "image": ("jpg", "jpeg", "png", "webp", "avif"),
}
KINDS = tuple(EXTENSIONS)

# What libmagic reports -> (kind, extension we report to the platform).
MIME_TYPES: dict[str, tuple[str, str]] = {
    "video/mp4": ("video", "mp4"),
    "video/quicktime": ("video", "mov"),
    "video/webm": ("video", "webm"),
    "video/x-matroska": ("video", "mkv"),
    "image/jpeg": ("image", "jpg"),
    "image/png": ("image", "png"),
    "image/webp": ("image", "webp"),
    "image/avif": ("image", "avif"),
}


def split_extension(name: str, kind: str) -> tuple[str, str] | None:
    """``("stem", "ext")`` when ``name`` ends in an extension allowed for ``kind`` (case blind)."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return None
    ext = ext.lower()
    return (stem, ext) if ext in EXTENSIONS[kind] else None
