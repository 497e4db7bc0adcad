"""``fulfiller send-test-event``: sign an event exactly as Outpost does and POST it.

Lets an operator prove a deployment end to end (secret, header prefix, mode)
without waiting for the platform. With ``--config`` it signs as that receiver
is configured (mode, header prefix, secrets, timestamp, and Outpost's signing
settings: header names, algorithm, encoding, templates) and posts to its port
on this machine; flags given on the command line win over the file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from fulfiller.config import Config, ConfigError
from fulfiller.intake.outpost import OutpostScheme
from fulfiller.intake.signing import Verifier

# The flags that shape the sample's creative; --file replaces the whole body, so none of them applies.
CREATIVE_FLAGS = ("code", "variation", "locale", "kind", "aspect", "family", "accepted")


def sample_event(upload_url: str, callback_url: str, *, code: str = "HRT-1212", variation: int = 2,
                 locale: str = "en", kind: str = "video", aspect: str = "9x16", family: str | None = None,
                 accepted: Sequence[str] = (), expires_in_s: int = 3600) -> dict[str, Any]:
    """A ``video.source_requested`` body shaped as the platform documents it: OSS (one ``aspectRatio``),
    or AFS (a ``placementFamily`` and its ``acceptedAspects``) when ``family`` is given."""
    expires = (datetime.now(UTC) + timedelta(seconds=expires_in_s)).replace(microsecond=0)
    creative: dict[str, Any] = {"code": code, "variation": variation, "locale": locale, "kind": kind}
    if family is None:
        creative["aspectRatio"] = aspect
    else:
        creative.update(placementFamily=family, acceptedAspects=list(accepted))
    return {
        "projectId": "019d928c-02e1-7000-8000-000000000001",
        "projectSlug": "hearty",
        "creative": creative,
        "facebook": {"facebookMediaIds": ["fm_a"], "ads": [], "adsets": [], "campaigns": []},
        "fulfillment": {
            "uploadUrl": upload_url,
            "storageKey": f"fb-external/019d928c/{code}/v{variation}/{locale}/{family or aspect}.{kind}",
            "expiresAt": expires.isoformat().replace("+00:00", "Z"),
            "completeCallbackUrl": callback_url,
        },
    }


def signed_headers(body: bytes, secrets: list[str], *, topic: str, event_id: str, mode: str = "outpost",
                   prefix: str | None = None, timestamped: bool = False,
                   scheme: OutpostScheme | None = None) -> dict[str, str]:
    """The headers Outpost would send with ``body``: with its default signing settings under ``prefix``, or
    (Outpost mode) as ``scheme`` configures them."""
    p = prefix or ("x-outpost-" if mode == "outpost" else "webhook-")
    verifier = Verifier(mode, secrets, p, 0, scheme=scheme)
    headers = verifier.sign(body, event_id=event_id, topic=topic, timestamp=int(time.time()), timestamped=timestamped)
    headers["content-type"] = "application/json"
    return headers


@dataclass(frozen=True)
class Signing:
    """How to sign: the flags first, then the receiver's config, then Outpost's defaults."""

    url: str
    mode: str
    prefix: str | None
    secrets: list[str]
    timestamped: bool


def signing(args: argparse.Namespace, config: Config | None) -> Signing:
    """The URL, mode, header prefix, secrets and timestamp to sign with; ConfigError naming the flag if not given."""
    receiver = config.receiver if config else None
    secrets = list(args.secret or [])
    for name in args.secret_env or []:
        value = os.environ.get(name)
        if not value:
            raise ConfigError([("--secret-env", f"environment variable {name} is not set")])
        secrets.append(value)
    if not secrets and receiver:
        secrets = list(receiver.secrets)
    if not secrets:
        raise ConfigError([("--secret", "give --secret S, --secret-env NAME, or a --config with receiver.secrets")])
    url = args.url or (_local_url(config) if config else None)
    if not url:
        raise ConfigError([("--url", "give --url URL, or --config to post to that receiver on this machine")])
    mode = args.mode or (receiver.mode if receiver else "outpost")
    return Signing(
        url=url,
        mode=mode,
        prefix=args.header_prefix or (receiver.header_prefix if receiver else None),
        secrets=secrets,
        # A receiver that requires a timestamp refuses a signature without one.
        timestamped=args.timestamped or bool(receiver and receiver.require_timestamp),
    )


def _local_url(config: Config) -> str:
    host = config.server.host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: this machine's loopback is one of them
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}{config.receiver.path}"


def event_body(args: argparse.Namespace, config: Config | None) -> bytes:
    """The body to send: the ``--file`` as given, or the sample shaped by the creative flags."""
    given = [f"--{name}" for name in CREATIVE_FLAGS if getattr(args, name) is not None]
    if args.file:
        if given:
            raise ConfigError([(given[0], "--file is sent as it is; the creative flags do not apply to it")])
        try:
            return Path(args.file).read_bytes()
        except OSError as exc:
            raise ConfigError([("--file", f"cannot read {args.file}: {exc.strerror}")]) from None
    if args.accepted is not None and args.family is None:
        raise ConfigError([("--accepted", "goes with --family (an --aspect request names its one aspect)")])
    accepted: list[str] = []
    if args.family is not None:
        accepted = [a.strip() for a in (args.accepted or "").split(",") if a.strip()]
        if not accepted and config:
            accepted = list(config.aspects.get(args.family, ()))
        if not accepted:
            raise ConfigError([("--accepted", f"--family {args.family} needs them, e.g. --accepted 1x1,4x5")])
    creative = {name: getattr(args, name) for name in ("code", "variation", "locale", "kind", "aspect")
                if getattr(args, name) is not None}
    event = sample_event(args.upload_url, args.callback_url, **creative, family=args.family, accepted=accepted)
    return json.dumps(event).encode()


def send_test_event(args: argparse.Namespace, config: Config | None, out: Callable[[str], None]) -> int:
    """POST the signed event; exit 0 when the receiver took it (2xx), 1 otherwise."""
    how = signing(args, config)
    body = event_body(args, config)
    event_id = args.event_id or f"evt_test_{uuid.uuid4().hex[:16]}"
    # The receiver's own signing settings (templates, algorithm, header names), under the prefix in force.
    scheme = config.receiver.scheme(how.prefix) if config else None
    headers = signed_headers(body, how.secrets, topic=args.topic, event_id=event_id, mode=how.mode,
                             prefix=how.prefix, timestamped=how.timestamped, scheme=scheme)
    try:
        response = httpx.post(how.url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        out(f"could not deliver to {how.url}: {exc}")
        return 1
    out(f"{response.status_code} {response.text.strip()}  (event {event_id}, topic {args.topic})")
    return 0 if response.is_success else 1
