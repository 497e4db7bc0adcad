"""The ``fulfiller`` command: thin wiring from arguments to the modules that do the work."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fulfiller import version
from fulfiller.config import Config, ConfigError, load_config
from fulfiller.logs import setup_logging

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SKIP = 0, 1, 2, 3
# How long a stopping server waits for its open HTTP requests, at most: more than the SQLite ingest deadline (8 s).
HTTP_SHUTDOWN_S = 10

log = logging.getLogger(__name__)


def _config(args: argparse.Namespace, *, need_secrets: bool = False) -> Config:
    """The config file; only ``serve`` and ``worker`` need ``receiver.secrets`` set (see parse_config)."""
    path = args.config or os.environ.get("FULFILLER_CONFIG")
    if not path:
        raise ConfigError([("--config", "give --config PATH or set FULFILLER_CONFIG")])
    return load_config(path, need_secrets=need_secrets)


def _startable(args: argparse.Namespace, *, answers_http: bool = False) -> Config:
    """The config of a process that serves: refused, as a config error, for whatever it could not start with
    (with ``answers_http``, the TLS files too)."""
    from fulfiller.preflight import check_state
    from fulfiller.tls import check_tls

    config = _config(args, need_secrets=True)
    for note in check_state(config.state):
        log.info(note)
    if answers_http:
        check_tls(config.server)
    log.info("fulfiller %s starting: %s", version(), args.command)
    return config


def _with_store(args: argparse.Namespace) -> Config:
    """The config of a command that opens the store: a state it could not open is a config error."""
    from fulfiller.preflight import check_state

    config = _config(args)
    check_state(config.state)
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    config = _startable(args, answers_http=True)  # before the server's imports: a config error comes first, and fast

    import uvicorn

    from fulfiller.app import create_app
    from fulfiller.delivery.worker import worker_service

    server = config.server
    app = create_app(config, service=None if args.no_worker else worker_service(config))
    uvicorn.run(
        app,
        host=args.host or server.host,
        port=args.port or server.port,
        ssl_certfile=server.tls_cert_file,
        ssl_keyfile=server.tls_key_file,
        # Proxy headers from the configured proxies only: uvicorn's own default trusts 127.0.0.1 and
        # FORWARDED_ALLOW_IPS from the environment, which would let a local process set the logged client.
        proxy_headers=server.forwarded_allow_ips is not None,
        forwarded_allow_ips=server.forwarded_allow_ips or "",
        log_config=None,
        access_log=False,
        # The wait for open HTTP requests comes before the workers' own grace (the lifespan's shutdown):
        # deliveries answer within the ingest deadline, so a slow client cannot stretch a stop to twice
        # the grace. A delivery cut here was never acked: Outpost sends it again.
        timeout_graceful_shutdown=min(HTTP_SHUTDOWN_S, int(config.worker.shutdown_grace_s) + 5),
    )
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    config = _startable(args)

    from fulfiller.delivery.worker import run_workers

    asyncio.run(run_workers(config))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from fulfiller.intake.signing import describe
    from fulfiller.preflight import check_state
    from fulfiller.tls import check_tls

    config = _config(args)
    notes = check_state(config.state)
    check_tls(config.server)
    print(f"ok: {len(config.catalogs)} catalog(s), {len(config.routes)} route(s), state {config.state.split(':')[0]}")
    receiver = config.receiver
    for line in describe(receiver.mode, receiver.prefix, receiver.scheme()):
        print(f"a delivery carries: {line}")
    if not config.receiver.secrets:
        notes.append("receiver.secrets: not set here; serve and worker need it")
    for note in notes:
        print(f"note: {note}")
    if args.probe:
        from fulfiller.delivery.resolve import probe_catalogs

        failures = asyncio.run(probe_catalogs(config, print))
        return EXIT_USAGE if failures else EXIT_OK
    return EXIT_OK


def cmd_resolve(args: argparse.Namespace) -> int:
    from fulfiller.delivery.resolve import dry_run

    return asyncio.run(dry_run(_config(args), args, print))


def cmd_jobs(args: argparse.Namespace) -> int:
    from fulfiller.ops.commands import list_jobs

    return asyncio.run(list_jobs(_with_store(args), args.status, args.code, args.limit, args.json, print))


def cmd_rerun(args: argparse.Namespace) -> int:
    from fulfiller.ops.commands import rerun

    return asyncio.run(rerun(_with_store(args), args.job_id, print, force=args.force))


def cmd_skip(args: argparse.Namespace) -> int:
    from fulfiller.ops.commands import skip

    return asyncio.run(skip(_with_store(args), args.job_id, args.reason, print))


def cmd_prune(args: argparse.Namespace) -> int:
    from fulfiller.ops import maintenance

    return maintenance.prune(_with_store(args), args.older_than, args.dry_run, print)


def cmd_backup(args: argparse.Namespace) -> int:
    from fulfiller.ops import maintenance

    return maintenance.backup(_with_store(args), args.to, print)


def _days(text: str) -> float:
    """A ``--older-than`` value: a number of days, never negative (that would reach into the future)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not days >= 0:  # nan too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (0 or more)")
    return days


def cmd_send_test_event(args: argparse.Namespace) -> int:
    from fulfiller.ops.testevent import send_test_event

    # Only an explicit --config: FULFILLER_CONFIG would quietly change how an event for another host is signed.
    config = load_config(args.config, need_secrets=False) if args.config else None
    return send_test_event(args, config, print)


def cmd_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fulfiller.intake.capture import CaptureError, parse_headers, parse_request
    from fulfiller.intake.doctor import diagnose

    if not args.request and not (args.headers and args.body):
        print("verify: give --request FILE, or --headers FILE and --body FILE", file=sys.stderr)
        return EXIT_USAGE
    config = _config(args)
    if not config.receiver.secrets:
        raise ConfigError([("receiver.secrets", "required: verify tests the signature with the configured secrets")])
    try:
        body = Path(args.body).read_bytes() if args.body else None
        if args.request:
            captured = parse_request(Path(args.request).read_bytes(), body)
            headers, body, note = captured.headers, captured.body, captured.note
        else:
            headers, note = parse_headers(Path(args.headers).read_text(encoding="latin-1")), None
    except (OSError, CaptureError) as exc:
        print(f"verify: unusable input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    diagnosis = diagnose(body or b"", headers, config.receiver, args.now)
    print(diagnosis.code)
    if len(diagnosis.codes) > 1:
        print("also: " + ", ".join(diagnosis.codes[1:]))
    for line in ([note] if note else []) + diagnosis.advice:
        print(f"- {line}")
    return EXIT_OK if diagnosis.ok else EXIT_ERROR


def cmd_probe(args: argparse.Namespace) -> int:
    from fulfiller.ops.probe import probe

    return asyncio.run(probe(args.files, args.json, print))


def cmd_audit(args: argparse.Namespace) -> int:
    from fulfiller.ops.audit import audit

    return asyncio.run(audit(_config(args), args.catalog, args.code, args.json, print, sys.stderr))


def cmd_demo(args: argparse.Namespace) -> int:
    from fulfiller.ops.demo import run_demo

    return asyncio.run(run_demo(print, keep=args.keep))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fulfiller", description="Deliver creative masters to the ad platform.")
    parser.add_argument("--version", action="version", version=f"fulfiller {version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-format", choices=["json", "text"], default=None,
                        help="log line format (default: json, or FULFILLER_LOG_FORMAT)")
    common.add_argument("--log-level", default=os.environ.get("FULFILLER_LOG_LEVEL"),
                        help="DEBUG, INFO (default), WARNING, ERROR (or FULFILLER_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str, config: bool = True) -> Any:
        p = sub.add_parser(name, help=help_, parents=[common])
        if config:
            p.add_argument("--config", help="config file (or FULFILLER_CONFIG)")
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "receiver and workers in one process")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-worker", action="store_true", help="receiver only")
    add("worker", cmd_worker, "workers only")
    p = add("check-config", cmd_check_config, "validate the config file")
    p.add_argument("--probe", action="store_true", help="also reach each catalog to prove credentials")
    p = add("resolve", cmd_resolve, "dry run: what would be delivered for these coordinates")
    p.add_argument("--code", required=True)
    p.add_argument("--variation", type=int, required=True)
    p.add_argument("--locale", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--aspect")
    group.add_argument("--family")
    p.add_argument("--kind", choices=["video", "image"], default="video")
    p.add_argument("--project", default=None, help="project slug")
    p.add_argument("--project-id", default="dry-run")
    p = add("jobs", cmd_jobs, "list jobs")
    p.add_argument("--status")
    p.add_argument("--code")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p = add("rerun", cmd_rerun, "re-queue a job")
    p.add_argument("job_id")
    p.add_argument("--force", action="store_true",
                   help="re-queue a completed job too (the platform most likely answers 409)")
    p = add("skip", cmd_skip, "tell the platform to skip a queued or running job")
    p.add_argument("job_id")
    p.add_argument("--reason", required=True, help="why, as the platform is told")
    p = add("prune", cmd_prune, "delete what retention would: finished jobs and old events")
    p.add_argument("--older-than", type=_days, metavar="DAYS", help="default: retention.keep_days")
    p.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    p = add("backup", cmd_backup, "a consistent copy of a SQLite state, while serve runs")
    p.add_argument("--to", required=True, metavar="FILE", help="where the copy goes")
    p = add("send-test-event", cmd_send_test_event, "sign a sample event as Outpost does and POST it", config=False)
    p.add_argument("--config", help="sign as this receiver is configured, and post to it on this machine")
    p.add_argument("--url", help="the receiver's URL (default with --config: its port on 127.0.0.1)")
    p.add_argument("--secret", action="append", help="repeat for rotation (current first)")
    p.add_argument("--secret-env", action="append", metavar="NAME",
                   help="take a secret from this environment variable (kept out of the process list)")
    p.add_argument("--topic", default="video.source_requested")
    p.add_argument("--file", help="JSON body to send instead of the sample")
    p.add_argument("--code", help="creative code (default HRT-1212)")
    p.add_argument("--variation", type=int, help="default 2")
    p.add_argument("--locale", help="default en")
    p.add_argument("--kind", choices=["video", "image"], help="default video")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--aspect", help="an OSS request for this aspect (default 9x16)")
    group.add_argument("--family", help="an AFS request for this placement family")
    p.add_argument("--accepted", help="with --family: accepted aspects, comma-separated (e.g. 1x1,4x5)")
    p.add_argument("--mode", choices=["outpost", "standard"], help="default outpost, or the --config's")
    p.add_argument("--header-prefix", default=None)
    p.add_argument("--timestamped", action="store_true", help="outpost mode: sign with t=<unix>")
    p.add_argument("--upload-url", default="https://example.r2.cloudflarestorage.com/sample?X-Amz-Signature=x")
    p.add_argument("--callback-url", default="https://api.trigger.dev/api/v1/waitpoints/tokens/waitpoint_x/complete")
    p.add_argument("--event-id", default=None)
    p = add("verify", cmd_verify, "say why a captured delivery's signature is refused, and what fixes it")
    p.add_argument("--request", metavar="FILE", help="the request as captured: curl -v, HTTP text, or JSON")
    p.add_argument("--headers", metavar="FILE", help="'Name: value' lines (with --body)")
    p.add_argument("--body", metavar="FILE", help="the body's exact bytes (or the body a curl -v capture lacks)")
    p.add_argument("--now", type=float, metavar="UNIX", help="check timestamps as of this time (default: now)")
    p = add("probe", cmd_probe, "measure media files: format, size, rotation, display aspect", config=False)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = add("audit", cmd_audit, "walk a catalog, measure every master, report what each creative can deliver")
    p.add_argument("--catalog", metavar="NAME", help="the catalog to walk (default: every configured one)")
    p.add_argument("--code", metavar="GLOB", help="only creatives whose code matches this glob")
    p.add_argument("--json", action="store_true", help="a JSON document for scripts")
    p = add("demo", cmd_demo, "run the whole loop locally with sample masters", config=False)
    p.add_argument("--keep", action="store_true", help="keep the demo's working folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fmt = args.log_format or os.environ.get("FULFILLER_LOG_FORMAT") or ("text" if args.command == "demo" else "json")
    # The demo tells its own story on stdout; its server logs would only interleave with it.
    setup_logging(fmt, args.log_level or ("WARNING" if args.command == "demo" else "INFO"))
    try:
        return args.func(args)
    except ConfigError as exc:
        print("config error:", file=sys.stderr)
        for path, msg in exc.errors:
            print(f"  {path}: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
