"""The container's HEALTHCHECK: asks ``GET /readyz`` where the running ``fulfiller serve`` listens.

The address is the one ``serve`` itself uses: ``--host``/``--port``/``--config`` on the container's
command line (PID 1, behind an init or not) first, then the config file (``FULFILLER_CONFIG``), whose
``${VAR}`` references read the same environment. HTTPS when the config names a certificate; it is not
verified, since it names the public host, not the loopback address asked here. A container running a
command without an HTTP side (``fulfiller worker``, a one-off ``prune``) has nothing to ask: it is
healthy while it runs. Exit 0 healthy, 1 not (Docker's convention), with one line saying why.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from fulfiller.config import ConfigError, load_config

TIMEOUT_S = 4.0
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def command_line(pid: int = 1) -> list[str]:
    """The fulfiller's own arguments in ``pid``'s command line (after ``fulfiller``), or [] if not found."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "fulfiller":
            return [a for a in argv[i + 1:] if a]
    return []


def readyz_url(args: list[str]) -> str | None:
    """Where ``fulfiller <args>`` answers ``/readyz``, or None when that command serves no HTTP."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("command", nargs="?", default="serve")
    parser.add_argument("--config")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    known, _ = parser.parse_known_args(args)
    if known.command != "serve":
        return None
    path = known.config or os.environ.get("FULFILLER_CONFIG")
    if not path:
        raise ConfigError([("--config", "not given, and FULFILLER_CONFIG is not set")])
    config = load_config(path, need_secrets=False)
    server = config.server
    host = known.host or server.host
    host = WILDCARDS.get(host, host)
    scheme = "https" if server.tls_cert_file else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{known.port or server.port}/readyz"


def main() -> int:
    args = command_line()
    try:
        url = readyz_url(args)
    except (ConfigError, OSError) as exc:
        print(f"unhealthy: cannot read the config: {exc}")
        return 1
    if url is None:
        print(f"healthy: `fulfiller {' '.join(args[:1])}` serves no HTTP; it is running")
        return 0
    # No proxy (HTTP_PROXY is meant for the fulfiller's egress, not for its own loopback).
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as answer:
            print(f"healthy: {url} answered {answer.status}")
            return 0
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}")
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
