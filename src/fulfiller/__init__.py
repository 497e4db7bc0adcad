"""Video-source fulfiller: delivers creative masters to an ad platform's pre-signed upload URLs."""

from __future__ import annotations

from functools import cache

DISTRIBUTION = "video-source-fulfiller"


@cache
def version() -> str:
    """This build's version, as the installed distribution's metadata records it.

    A source tree that was never installed has no metadata: it says ``0+unknown`` rather than guess.
    """
    # Imported here: importlib.metadata costs every process that imports the package, and few ask.
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def __getattr__(name: str) -> str:
    # ``fulfiller.__version__`` as tools expect it, read from the metadata only when asked for.
    if name == "__version__":
        return version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
