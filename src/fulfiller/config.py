"""Configuration: YAML with ``${VAR}`` / ``${VAR:-default}`` expansion, validated by pydantic.

Every error names the dotted key path it is about, so an operator can fix the
file without reading a stack trace.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fulfiller.hosts import parse_pattern
from fulfiller.intake.outpost import Codec, HeaderNames, OutpostScheme, SchemeError
from fulfiller.intake.signing import Verifier
from fulfiller.intake.templates import DEFAULT_CONTENT, DEFAULT_HEADER

LAYOUT_FIELDS = frozenset({"project", "project_id", "code", "variation", "locale", "aspect", "kind"})
DEFAULT_LAYOUT = "{code}/v{variation}/{locale}/{aspect}"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration that cannot be used; ``errors`` pairs dotted key paths with messages."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in errors))


class _PathError(ValueError):
    """A cross-field error that knows its own dotted path."""

    def __init__(self, path: str, msg: str):
        super().__init__(msg)
        self.path = path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    tls_cert_file: str | None = Field(None, description="with tls_key_file: serve HTTPS directly (PEM)")
    tls_key_file: str | None = None
    forwarded_allow_ips: str | None = Field(
        None, description="proxies whose X-Forwarded-For/Proto are trusted (uvicorn's setting)")

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing, other = ("tls_key_file", "tls_cert_file") if self.tls_cert_file else ("tls_cert_file", "tls_key_file")
            raise _PathError(f"server.{missing}", f"required with {other} (set both, or neither)")
        return self


class ReceiverConfig(_Strict):
    path: str = "/webhooks/outpost"
    max_body_bytes: int = Field(1_048_576, ge=1)
    mode: Literal["outpost", "standard"] = "outpost"
    header_prefix: str | None = None
    # Required by ``serve`` and ``worker`` (see parse_config's ``need_secrets``); commands that only read
    # never verify a signature.
    secrets: list[str] = []
    timestamp_tolerance_s: int = Field(300, ge=0)  # 0: no check
    require_timestamp: bool = False  # refuse signatures that carry no timestamp (no replay window)
    # Outpost's DESTINATIONS_WEBHOOK_* signing settings (defaults = Outpost's). A header name: None is
    # {prefix}<key>, a name pins it, "" means Outpost does not send it.
    event_id_header: str | None = None
    topic_header: str | None = None
    timestamp_header: str | None = None
    signature_header: str | None = None
    signature_algorithm: Literal["hmac-sha256", "hmac-sha1", "hmac-md5"] = "hmac-sha256"
    signature_encoding: Literal["hex", "base64"] = "hex"
    signature_content_template: str = DEFAULT_CONTENT
    signature_header_template: str = DEFAULT_HEADER

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v

    @field_validator("secrets")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(not s for s in v):
            raise ValueError("a secret is empty (is its environment variable set?)")
        return v

    @model_validator(mode="after")
    def _signing_fits_the_mode(self) -> ReceiverConfig:
        # The receiver builds its verifier the same way: a setting or secret it could not use fails here, by key.
        if self.mode == "standard":
            for key in _OUTPOST_ONLY:
                if getattr(self, key) != ReceiverConfig.model_fields[key].default:
                    raise _PathError(f"receiver.{key}", "applies to mode: outpost (Standard Webhooks fixes it)")
        try:
            scheme = self.scheme()
        except SchemeError as exc:
            raise _PathError(f"receiver.{exc.key}", str(exc)) from None
        for i, secret in enumerate(self.secrets):
            try:
                Verifier(self.mode, [secret], self.prefix, self.timestamp_tolerance_s, scheme=scheme)
            except ValueError as exc:
                raise _PathError(f"receiver.secrets.{i}", str(exc)) from None
        return self

    @property
    def prefix(self) -> str:
        """The header prefix in force: ``x-outpost-`` (outpost mode) or ``webhook-`` (standard)."""
        if self.header_prefix is not None:
            return self.header_prefix.lower()
        return "x-outpost-" if self.mode == "outpost" else "webhook-"

    def scheme(self, prefix: str | None = None) -> OutpostScheme:
        """The Outpost signing settings, under this header prefix or ``prefix``; SchemeError naming the key."""
        names = HeaderNames.resolve((prefix or self.prefix).lower(), event_id=self.event_id_header,
                                    topic=self.topic_header, timestamp=self.timestamp_header,
                                    signature=self.signature_header)
        return OutpostScheme(names, Codec(self.signature_algorithm, self.signature_encoding),
                             content_template=self.signature_content_template,
                             header_template=self.signature_header_template, require_timestamp=self.require_timestamp)

    def verifier(self) -> Verifier:
        """The receiver's verifier: these secrets, this mode, these signing settings."""
        return Verifier(self.mode, self.secrets, self.prefix, self.timestamp_tolerance_s, self.require_timestamp,
                        scheme=self.scheme())


# Settings that only Outpost's default mode has: Standard Webhooks fixes its names, algorithm and content.
_OUTPOST_ONLY = ("event_id_header", "timestamp_header", "signature_header", "signature_algorithm",
                 "signature_encoding", "signature_content_template", "signature_header_template")


MIN_ADMIN_TOKEN = 16


class AdminConfig(_Strict):
    token: str = ""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: str) -> str:
        # The token opens rerun and skip on every job: one guessable in a few tries must not start.
        if v and len(v) < MIN_ADMIN_TOKEN:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN} characters (or empty: no admin routes)")
        return v


def _host_pattern(v: str) -> str:
    parse_pattern(v)  # a pattern that can never match (a scheme, a path) is an error now, not a silent refusal later
    return v


HostPattern = Annotated[str, AfterValidator(_host_pattern)]


class WorkerConfig(_Strict):
    concurrency: int = Field(4, ge=1, le=256)
    allow_insecure_http: bool = False
    allowed_upload_hosts: list[HostPattern] = ["*.r2.cloudflarestorage.com"]
    allowed_callback_hosts: list[HostPattern] = ["api.trigger.dev"]
    lease_s: float = Field(60.0, gt=0, description="how long a claim lasts without renewal")
    poll_interval_s: float = Field(1.0, gt=0, description="idle wait between looks for queued work")
    shutdown_grace_s: float = Field(30.0, ge=0, description="time given to in-flight jobs on SIGTERM")
    chunk_bytes: int = Field(1_048_576, ge=65_536, description="streaming chunk size")
    retry_base_s: float = Field(1.0, gt=0, description="first backoff step; later ones grow exponentially")
    retry_max_s: float = Field(60.0, gt=0, description="longest single backoff wait")
    http_timeout_s: float = Field(60.0, gt=0, description="connect/read/write timeout for uploads and callbacks")
    negative_ack_failures: bool = Field(
        False, description="on failed/invalid, also send the platform a skip so the import resumes at once")
    check_aspect: bool = Field(
        True, description="measure each master; never deliver one whose picture is not the aspect it is delivered as")


def _check_layout(v: str) -> str:
    names = {name for _, name, _, _ in string.Formatter().parse(v) if name is not None}
    unknown = names - LAYOUT_FIELDS
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(LAYOUT_FIELDS)}")
    if not v or v.endswith("/"):
        raise ValueError("the last segment must name the file (without extension)")
    # The layout's own text must be renderable: catalogs refuse these segments, so every request would skip.
    for segment in re.sub(r"\{[^}]*\}", "x", v).split("/"):
        if segment in (".", "..") or "\\" in segment or any(ord(c) < 32 or ord(c) == 127 for c in segment):
            raise ValueError(f"segment {segment!r} can never name a folder or file (., .., \\ or a control character)")
    return v


class _CatalogBase(_Strict):
    layout: str = DEFAULT_LAYOUT

    _layout = field_validator("layout")(classmethod(lambda cls, v: _check_layout(v)))


class DriveCatalogConfig(_CatalogBase):
    type: Literal["drive"]
    root_folder_id: str = Field(min_length=1)
    credentials_file: str = ""
    api_endpoint: str | None = None
    folder_cache_s: float = Field(60.0, ge=0)
    quota_copy_folder_id: str | None = Field(
        None, min_length=1, description="a folder the service account can write to: on downloadQuotaExceeded, "
        "copy the master there, stream the copy, delete it")


class S3CatalogConfig(_CatalogBase):
    type: Literal["s3"]
    bucket: str = Field(min_length=1)
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None


class LocalCatalogConfig(_CatalogBase):
    type: Literal["local"]
    root: str = "./masters"


CatalogConfig = Annotated[
    DriveCatalogConfig | S3CatalogConfig | LocalCatalogConfig, Field(discriminator="type")
]


class RouteConfig(_Strict):
    project: str | None = None
    codes: list[str] = ["*"]
    catalog: str


class RetentionConfig(_Strict):
    keep_days: float = Field(
        30, ge=0, description="finished jobs, their events and other topics' events older than this are deleted; "
        "0 keeps everything")


class Config(_Strict):
    server: ServerConfig = ServerConfig()
    state: str = "sqlite:///./fulfiller.db"
    receiver: ReceiverConfig = ReceiverConfig()
    admin: AdminConfig = AdminConfig()
    worker: WorkerConfig = WorkerConfig()
    aspects: dict[str, list[str]] = {"feed": ["4x5", "1x1", "3x4"], "story_reel": ["9x16"]}
    catalogs: dict[str, CatalogConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(min_length=1)
    retention: RetentionConfig = RetentionConfig()

    @field_validator("state")
    @classmethod
    def _state_url(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://USER:PASS@HOST:PORT/DB")
        return v

    @model_validator(mode="after")
    def _routes_name_catalogs(self) -> Config:
        for i, route in enumerate(self.routes):
            if route.catalog not in self.catalogs:
                raise _PathError(
                    f"routes.{i}.catalog", f"no catalog named {route.catalog!r} (have {sorted(self.catalogs)})"
                )
        return self


def _expand(node: Any, path: str, env: Mapping[str, str], errors: list[tuple[str, str]]) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), env, errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}.{i}", env, errors) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        # As in the shell: ${VAR:-default} takes the default when VAR is unset *or empty*.
        if value is not None and (value or default is None):
            return value
        if default is not None:
            return default
        errors.append((path, f"environment variable {name} is not set"))
        return ""

    return _ENV_REF.sub(sub, node)


def _dotted(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # A discriminated union puts the tag ("drive", "s3", "local") in the path; people don't write it.
    if len(parts) > 2 and parts[0] == "catalogs" and parts[2] in ("drive", "s3", "local"):
        del parts[2]
    return ".".join(parts) or "(top level)"


SECRETS_REQUIRED = ("receiver.secrets", "required: at least one signing secret (serve verifies every delivery)")


def parse_config(text: str, env: Mapping[str, str] | None = None, *, need_secrets: bool = True) -> Config:
    """Parse YAML text into a validated Config, or raise ConfigError listing every bad key.

    With ``need_secrets`` false (commands that never verify a signature), ``receiver.secrets`` may be
    unset: entries whose environment variable is unset or empty are left out. A secret that is set is
    still checked against the mode.
    """
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([("(file)", f"not valid YAML: {exc}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError([("(file)", "must be a YAML mapping")])
    errors: list[tuple[str, str]] = []
    expanded = _expand(raw, "", env, errors)
    if not need_secrets:
        errors = _leave_out_unset_secrets(expanded, errors)
    if errors:
        raise ConfigError(errors)
    missing = [SECRETS_REQUIRED] if need_secrets and _no_secrets(expanded) else []
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(missing + _named(exc)) from None
    if missing:
        raise ConfigError(missing)
    return config


def _no_secrets(expanded: dict[str, Any]) -> bool:
    receiver = expanded.get("receiver") or {}
    return isinstance(receiver, dict) and not receiver.get("secrets")


def _leave_out_unset_secrets(expanded: dict[str, Any], errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The errors that remain once secrets whose variable is unset (or empty) are left out of ``expanded``."""
    receiver = expanded.get("receiver")
    if isinstance(receiver, dict) and isinstance(receiver.get("secrets"), list):
        receiver["secrets"] = [s for s in receiver["secrets"] if s != ""]  # an unset variable expanded to ""
    return [(path, msg) for path, msg in errors if not path.startswith("receiver.secrets")]


def _named(exc: ValidationError) -> list[tuple[str, str]]:
    """Pydantic's errors as (dotted key path, message) pairs."""
    out = []
    for e in exc.errors():
        ctx_err = (e.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _PathError):
            out.append((ctx_err.path, str(ctx_err)))
            continue
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        out.append((_dotted(e["loc"]), msg.removeprefix("Value error, ")))
    return out


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                need_secrets: bool = True) -> Config:
    """Read and validate the configuration file at ``path`` (``need_secrets``: see parse_config)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([("(file)", f"cannot read {path}: {exc.strerror}")]) from None
    return parse_config(text, env, need_secrets=need_secrets)


__all__ = [
    "CatalogConfig",
    "Config",
    "ConfigError",
    "DriveCatalogConfig",
    "LocalCatalogConfig",
    "S3CatalogConfig",
    "load_config",
    "parse_config",
]
