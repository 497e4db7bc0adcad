"""The configuration file: SPEC's defaults, ${ENV} expansion, and errors that name the dotted key path."""

from __future__ import annotations

import base64
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from fulfiller.config import (
    ConfigError,
    DriveCatalogConfig,
    LocalCatalogConfig,
    S3CatalogConfig,
    load_config,
    parse_config,
)
from support.servers import fulfiller_command

MINIMAL = """
receiver:
  secrets: ["whsec_x"]
catalogs:
  local: {type: local}
routes:
  - catalog: local
"""

# SPEC's example file, verbatim.
SPEC_EXAMPLE = """
server:
  host: 0.0.0.0
  port: 8080
state: sqlite:///./fulfiller.db      # or postgresql://user:pass@host:5432/db

receiver:
  path: /webhooks/outpost
  max_body_bytes: 1048576
  mode: outpost                      # outpost | standard (Standard Webhooks)
  header_prefix: x-outpost-          # Outpost's DESTINATIONS_WEBHOOK_HEADER_PREFIX; default webhook- in standard mode
  secrets: ["${OUTPOST_SIGNING_SECRET}"]   # required; current first, previous during rotation
  timestamp_tolerance_s: 300         # used when the signature carries a timestamp

admin:
  token: ${FULFILLER_ADMIN_TOKEN:-}  # empty: admin routes are not mounted

worker:
  concurrency: 4                     # jobs in flight per process
  allow_insecure_http: false         # true only for local tests: lets http:// through (allow-lists still apply)
  allowed_upload_hosts: ["*.r2.cloudflarestorage.com"]   # host globs; "host:port" pins a port, bare host: any port
  allowed_callback_hosts: ["api.trigger.dev"]

aspects:                             # preference when a request lets us pick (AFS)
  feed: ["4x5", "1x1", "3x4"]
  story_reel: ["9x16"]

catalogs:                            # required: at least one
  masters-drive:
    type: drive
    root_folder_id: 0AbCdEfGh        # a folder, or a shared drive's id
    credentials_file: ${GOOGLE_APPLICATION_CREDENTIALS:-}   # service-account JSON; empty: application default credentials
    api_endpoint: null               # default Google's; set for a proxy or a test double
    layout: "{code}/v{variation}/{locale}/{aspect}"
  masters-s3:
    type: s3
    bucket: creative-masters
    prefix: ""
    region: null
    endpoint_url: null               # for MinIO, R2 or any S3-compatible store
    layout: "{code}/v{variation}/{locale}/{aspect}"
  local:
    type: local
    root: ./masters
    layout: "{code}/v{variation}/{locale}/{aspect}"

routes:                              # required; first match wins
  - project: hearty                  # optional: the event's projectSlug
    codes: ["HRT-*"]                 # globs on creative.code
    catalog: masters-drive
  - codes: ["*"]
    catalog: masters-s3
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {})
    return dict(info.value.errors)


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_are_the_ones_spec_shows() -> None:
    config = parse_config(MINIMAL, env={})
    assert (config.server.host, config.server.port) == ("0.0.0.0", 8080)
    assert config.state == "sqlite:///./fulfiller.db"
    r = config.receiver
    assert r.path == "/webhooks/outpost"
    assert r.max_body_bytes == 1_048_576
    assert r.mode == "outpost"
    assert r.prefix == "x-outpost-"
    assert r.secrets == ["whsec_x"]
    assert r.timestamp_tolerance_s == 300
    # Outpost's own signing defaults, each key as SPEC names it.
    assert (r.event_id_header, r.topic_header, r.timestamp_header, r.signature_header) == (None, None, None, None)
    assert (r.signature_algorithm, r.signature_encoding) == ("hmac-sha256", "hex")
    assert r.signature_content_template == "{{.Body}}"
    assert r.signature_header_template == 'v0={{.Signatures | join ","}}'
    assert config.admin.token == ""
    w = config.worker
    assert w.concurrency == 4
    assert w.allow_insecure_http is False
    assert w.allowed_upload_hosts == ["*.r2.cloudflarestorage.com"]
    assert w.allowed_callback_hosts == ["api.trigger.dev"]
    assert config.aspects == {"feed": ["4x5", "1x1", "3x4"], "story_reel": ["9x16"]}
    local = config.catalogs["local"]
    assert isinstance(local, LocalCatalogConfig)
    assert local.root == "./masters"
    assert local.layout == "{code}/v{variation}/{locale}/{aspect}"
    assert config.routes[0].project is None
    assert config.routes[0].codes == ["*"]


def test_catalog_defaults() -> None:
    config = parse_config(MINIMAL.replace("local: {type: local}", textwrap.dedent("""\
        local: {type: local}
          d: {type: drive, root_folder_id: abc}
          s: {type: s3, bucket: b}""")), env={})
    drive, s3 = config.catalogs["d"], config.catalogs["s"]
    assert isinstance(drive, DriveCatalogConfig) and isinstance(s3, S3CatalogConfig)
    assert (drive.credentials_file, drive.api_endpoint) == ("", None)
    assert drive.layout == s3.layout == "{code}/v{variation}/{locale}/{aspect}"
    assert (s3.prefix, s3.region, s3.endpoint_url) == ("", None, None)


def test_standard_mode_defaults_its_header_prefix_and_custom_prefixes_are_lowercased() -> None:
    text = MINIMAL.replace("receiver:\n", "receiver:\n  mode: standard\n").replace("whsec_x", "whsec_c2VjcmV0")
    standard = parse_config(text, env={})
    assert standard.receiver.prefix == "webhook-"
    custom = parse_config(MINIMAL.replace("receiver:\n", "receiver:\n  header_prefix: X-Acme-\n"), env={})
    assert custom.receiver.prefix == "x-acme-"


def test_spec_example_parses() -> None:
    config = parse_config(SPEC_EXAMPLE, env={"OUTPOST_SIGNING_SECRET": "whsec_spec"})
    assert config.receiver.secrets == ["whsec_spec"]
    assert config.admin.token == ""
    assert sorted(config.catalogs) == ["local", "masters-drive", "masters-s3"]
    assert [r.catalog for r in config.routes] == ["masters-drive", "masters-s3"]
    assert config.routes[0].project == "hearty"


def test_repository_example_config_parses() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
    config = load_config(example, env={"OUTPOST_SIGNING_SECRET": "whsec_example"})
    assert config.receiver.secrets == ["whsec_example"]


def test_tls_and_trusted_proxies_are_off_by_default() -> None:
    server = parse_config(MINIMAL, env={}).server
    assert (server.tls_cert_file, server.tls_key_file, server.forwarded_allow_ips) == (None, None, None)


def test_tls_files_and_trusted_proxies_are_taken_from_the_environment() -> None:
    text = MINIMAL + ("server:\n  tls_cert_file: ${TLS_CERT}\n  tls_key_file: ${TLS_KEY}\n"
                      "  forwarded_allow_ips: ${PROXIES:-10.0.0.0/8}\n")
    server = parse_config(text, env={"TLS_CERT": "/run/secrets/cert.pem", "TLS_KEY": "/run/secrets/key.pem"}).server
    assert (server.tls_cert_file, server.tls_key_file) == ("/run/secrets/cert.pem", "/run/secrets/key.pem")
    assert server.forwarded_allow_ips == "10.0.0.0/8"


@pytest.mark.parametrize("given, missing", [("tls_cert_file", "tls_key_file"), ("tls_key_file", "tls_cert_file")])
def test_one_tls_file_without_the_other_is_an_error_naming_the_missing_one(given: str, missing: str) -> None:
    errors = errors_of(MINIMAL + f"server: {{{given}: /etc/fulfiller/{given}.pem}}\n")
    [(path, message)] = errors.items()
    assert path.startswith("server") and missing in f"{path}: {message}"


# --- ${ENV} ---------------------------------------------------------------------------------------


def test_env_references_are_expanded() -> None:
    text = textwrap.dedent("""
        server:
          port: ${PORT}
          host: "${HOST:-127.0.0.1}"
        state: sqlite:///${DATA_DIR:-/var/lib/fulfiller}/state.db
        receiver:
          secrets: ["${CUR}", "${PREV}"]
          header_prefix: x-${BRAND}-
        admin:
          token: ${TOKEN:-}
        worker:
          allow_insecure_http: ${INSECURE:-false}
        catalogs:
          local: {type: local, root: "${ROOT:-./masters}"}
        routes:
          - catalog: local
        """)
    env = {"PORT": "9090", "CUR": "whsec_cur", "PREV": "whsec_prev", "BRAND": "acme", "DATA_DIR": "/srv",
           "ROOT": "/data/masters", "INSECURE": "true"}
    config = parse_config(text, env=env)
    assert config.server.port == 9090  # a string from the environment, validated as the int it must be
    assert config.server.host == "127.0.0.1"
    assert config.state == "sqlite:////srv/state.db"
    assert config.receiver.secrets == ["whsec_cur", "whsec_prev"]
    assert config.receiver.prefix == "x-acme-"
    assert config.admin.token == ""
    assert config.worker.allow_insecure_http is True
    assert config.catalogs["local"].root == "/data/masters"


def test_default_applies_when_the_variable_is_set_but_empty() -> None:
    """As the shell (and docker compose) do for ``${VAR:-default}``."""
    text = MINIMAL + "server:\n  port: ${PORT:-8081}\n"
    assert parse_config(text, env={"PORT": ""}).server.port == 8081
    assert parse_config(text, env={}).server.port == 8081
    assert parse_config(text, env={"PORT": "9000"}).server.port == 9000


def test_environment_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FULFILLER_TEST_SECRET", "whsec_from_env")
    config = parse_config(MINIMAL.replace('"whsec_x"', '"${FULFILLER_TEST_SECRET}"'))
    assert config.receiver.secrets == ["whsec_from_env"]


def test_missing_env_var_names_each_key_path() -> None:
    text = MINIMAL.replace('"whsec_x"', '"${CUR}", "${PREV}"') + "admin:\n  token: ${TOKEN}\n"
    errors = errors_of(text)
    assert errors == {
        "receiver.secrets.0": "environment variable CUR is not set",
        "receiver.secrets.1": "environment variable PREV is not set",
        "admin.token": "environment variable TOKEN is not set",
    }


def test_a_set_but_empty_secret_is_refused() -> None:
    errors = errors_of(MINIMAL.replace('"whsec_x"', '"${CUR}"'), env={"CUR": ""})
    assert "receiver.secrets" in errors
    assert "empty" in errors["receiver.secrets"]


def test_commands_that_only_read_take_a_config_without_secrets() -> None:
    """``need_secrets=False``: secrets whose variable is unset or empty are left out; the rest still apply."""
    text = MINIMAL.replace('"whsec_x"', '"${CUR}", "${PREV}"') + "admin:\n  token: ${TOKEN}\n"
    lenient = parse_config(text, env={"TOKEN": "t" * 16}, need_secrets=False)
    assert lenient.receiver.secrets == []
    assert parse_config(text, env={"TOKEN": "t" * 16, "PREV": "p", "CUR": ""},
                        need_secrets=False).receiver.secrets == ["p"]
    no_receiver = MINIMAL.replace('receiver:\n  secrets: ["whsec_x"]\n', "")
    assert parse_config(no_receiver, env={}, need_secrets=False).receiver.secrets == []
    # Only the secrets may be missing: any other unset variable is still an error.
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={}, need_secrets=False)
    assert dict(info.value.errors) == {"admin.token": "environment variable TOKEN is not set"}


def test_a_secret_the_mode_cannot_use_names_its_key() -> None:
    """Standard Webhooks secrets are base64: one that is not would fail every delivery, so it fails here."""
    good = "whsec_" + base64.b64encode(b"k" * 24).decode()
    text = MINIMAL.replace("receiver:\n", "receiver:\n  mode: standard\n").replace(
        '"whsec_x"', f'"{good}", "whsec_not base64!"')
    errors = errors_of(text)
    assert errors == {"receiver.secrets.1": "a Standard Webhooks secret is not valid base64 (expected whsec_<base64>)"}
    # Also when the secret is only checked, not needed (a read-only command given it).
    with pytest.raises(ConfigError):
        parse_config(text, env={}, need_secrets=False)
    # The same string is a fine Outpost secret: Outpost keys on the text as issued.
    assert parse_config(text.replace("mode: standard", "mode: outpost"), env={}).receiver.secrets[1] == (
        "whsec_not base64!")


# --- unknown keys and bad values ---------------------------------------------------------------


def test_unknown_keys_are_errors_naming_the_dotted_path() -> None:
    text = textwrap.dedent("""
        serverz: {}
        receiver:
          secrets: ["whsec_x"]
          secretz: ["oops"]
        worker:
          concurency: 8
        catalogs:
          masters-s3: {type: s3, bucket: b, bucketz: c}
          masters-drive: {type: drive, root_folder_id: a, credentials: x}
        routes:
          - catalog: masters-s3
            code: ["*"]
        """)
    errors = errors_of(text)
    assert errors == {
        "serverz": "unknown key",
        "receiver.secretz": "unknown key",
        "worker.concurency": "unknown key",
        "catalogs.masters-s3.bucketz": "unknown key",
        "catalogs.masters-drive.credentials": "unknown key",
        "routes.0.code": "unknown key",
    }


def test_route_naming_a_missing_catalog() -> None:
    text = MINIMAL.replace("  - catalog: local\n", "  - catalog: local\n  - codes: ['X-*']\n    catalog: masters\n")
    errors = errors_of(text)
    assert list(errors) == ["routes.1.catalog"]
    assert "masters" in errors["routes.1.catalog"] and "local" in errors["routes.1.catalog"]
    errors = errors_of(MINIMAL.replace("  - catalog: local\n", "  - catalog: nope\n"))
    assert list(errors) == ["routes.0.catalog"]


@pytest.mark.parametrize("layout, message", [
    ("{code}/{codez}/{aspect}", "codez"),
    ("{code}/v{variation}/{size}", "size"),
    ("{code}/v{variation}/{locale}/", "last segment"),
    ("{code", "expected '}'"),
    ("../{code}/{aspect}", "can never name"),
    ("{code}/./{aspect}", "can never name"),
    ("{code}\\\\{aspect}", "can never name"),
])
def test_bad_layout(layout: str, message: str) -> None:
    errors = errors_of(MINIMAL.replace("local: {type: local}", f'local: {{type: local, layout: "{layout}"}}'))
    assert list(errors) == ["catalogs.local.layout"]
    assert message in errors["catalogs.local.layout"]


def test_every_layout_placeholder_spec_lists_is_allowed() -> None:
    layout = "{project}/{project_id}/{code}/v{variation}/{locale}/{kind}/{aspect}"
    config = parse_config(MINIMAL.replace("local: {type: local}", f'local: {{type: local, layout: "{layout}"}}'),
                          env={})
    assert config.catalogs["local"].layout == layout


@pytest.mark.parametrize("text, path", [
    (MINIMAL.replace("receiver:\n  secrets: [\"whsec_x\"]\n", ""), "receiver.secrets"),
    (MINIMAL.replace('["whsec_x"]', "[]"), "receiver.secrets"),
    (MINIMAL.replace("local: {type: local}", "local: {type: ftp}"), "catalogs.local"),
    (MINIMAL.replace("local: {type: local}", "s3: {type: s3}").replace("catalog: local", "catalog: s3"),
     "catalogs.s3.bucket"),
    (MINIMAL + "state: mysql://db/x\n", "state"),
    (MINIMAL + "server: {port: 70000}\n", "server.port"),
    (MINIMAL.replace("receiver:\n", "receiver:\n  mode: hmac\n"), "receiver.mode"),
    (MINIMAL.replace("receiver:\n", "receiver:\n  path: webhooks\n"), "receiver.path"),
    (MINIMAL + "worker: {concurrency: 0}\n", "worker.concurrency"),
])
def test_bad_values_name_their_key(text: str, path: str) -> None:
    assert path in errors_of(text)


# --- allow-lists and the admin token ------------------------------------------------------------


@pytest.mark.parametrize("patterns", [
    ["*.r2.cloudflarestorage.com", "uploads.example.com:443", "uploads.example.com:*", "127.0.0.1:9000",
     "[::1]:8080", "[::1]:*", "::1", "*"],
])
def test_allow_list_patterns_spec_names_are_taken(patterns: list[str]) -> None:
    text = MINIMAL + f"worker: {{allowed_upload_hosts: {patterns}, allowed_callback_hosts: {patterns}}}\n"
    worker = parse_config(text, env={}).worker
    assert worker.allowed_upload_hosts == worker.allowed_callback_hosts == patterns


@pytest.mark.parametrize(("key", "patterns", "bad", "hint"), [
    ("allowed_upload_hosts", ["ok.example", "https://uploads.example.com"], 1, "without a scheme"),
    ("allowed_callback_hosts", ["api.trigger.dev/api/v1"], 0, "a path"),
    ("allowed_upload_hosts", ["uploads.example.com:99999"], 0, "1-65535"),
    ("allowed_upload_hosts", ["uploads.example.com:https"], 0, "1-65535"),
    ("allowed_callback_hosts", ["api.trigger.dev "], 0, ""),
    ("allowed_callback_hosts", [""], 0, ""),
])
def test_an_allow_list_pattern_that_can_never_match_is_an_error_naming_its_key(
    key: str, patterns: list[str], bad: int, hint: str,
) -> None:
    errors = errors_of(MINIMAL + f"worker:\n  {key}: {patterns!r}\n")
    assert list(errors) == [f"worker.{key}.{bad}"]
    assert repr(patterns[bad]) in errors[f"worker.{key}.{bad}"] and hint in errors[f"worker.{key}.{bad}"]


@pytest.mark.parametrize("token", ["tooshort", "fifteen-chars-x"])
def test_an_admin_token_shorter_than_16_characters_is_an_error(token: str) -> None:
    errors = errors_of(MINIMAL + "admin:\n  token: ${TOKEN}\n", env={"TOKEN": token})
    assert list(errors) == ["admin.token"]
    assert "at least 16 characters" in errors["admin.token"]
    assert token not in errors["admin.token"]  # the message does not repeat the secret


@pytest.mark.parametrize("token", ["", "sixteen-chars-ok"])
def test_an_empty_or_long_enough_admin_token_is_taken(token: str) -> None:
    assert parse_config(MINIMAL + "admin:\n  token: ${TOKEN:-}\n", env={"TOKEN": token}).admin.token == token


def test_empty_catalogs_and_routes_are_refused() -> None:
    errors = errors_of("receiver: {secrets: [s]}\ncatalogs: {}\nroutes: []\n")
    assert set(errors) == {"catalogs", "routes"}


@pytest.mark.parametrize("text", ["", "- a list\n", "receiver: [unclosed\n"])
def test_not_a_mapping_or_not_yaml(text: str) -> None:
    assert list(errors_of(text)) == ["(file)"]


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert info.value.errors[0][0] == "(file)"


# --- fulfiller check-config ----------------------------------------------------------------------


def fulfiller(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("FULFILLER_CONFIG", "OUTPOST_SIGNING_SECRET")}
    full_env.update(env or {})
    return subprocess.run([*fulfiller_command(), *args], capture_output=True, text=True, env=full_env, timeout=60,
                          check=False)


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return fulfiller("check-config", *args, env=env)


def test_check_config_ok_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(SPEC_EXAMPLE)
    done = check_config("--config", str(path), env={"OUTPOST_SIGNING_SECRET": "whsec_cli"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 3 catalog(s), 2 route(s)")
    assert "whsec_cli" not in done.stdout + done.stderr


def test_check_config_takes_fulfiller_config_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(MINIMAL)
    done = check_config(env={"FULFILLER_CONFIG": str(path)})
    assert done.returncode == 0, done.stderr
    assert check_config().returncode == 2  # neither --config nor FULFILLER_CONFIG


def test_check_config_lists_each_bad_key_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent("""
        receiver:
          secrets: ["whsec_x"]
          secretz: ["typo"]
        catalogs:
          masters-s3: {type: s3, bucket: creative-masters, bucketz: oops}
          local: {type: local, layout: "{code}/{colour}"}
        routes:
          - catalog: masters-s3
        """))
    done = check_config("--config", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = [line.strip() for line in done.stderr.splitlines()]
    assert lines[0] == "config error:"
    assert "receiver.secretz: unknown key" in lines
    assert "catalogs.masters-s3.bucketz: unknown key" in lines
    assert any(line.startswith("catalogs.local.layout: unknown placeholder(s) ['colour']") for line in lines)
    assert len(lines) == 4


def test_check_config_missing_env_var_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(SPEC_EXAMPLE.replace("${GOOGLE_APPLICATION_CREDENTIALS:-}", "${FULFILLER_TEST_KEY_FILE}"))
    done = check_config("--config", str(path), env={"OUTPOST_SIGNING_SECRET": "whsec_cli"})
    assert done.returncode == 2
    assert "catalogs.masters-drive.credentials_file: environment variable FULFILLER_TEST_KEY_FILE is not set" in (
        done.stderr)
    done = check_config("--config", str(tmp_path / "absent.yaml"))
    assert done.returncode == 2
    assert "(file): cannot read" in done.stderr


def test_check_config_needs_no_signing_secret_but_says_serve_does(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(SPEC_EXAMPLE)
    done = check_config("--config", str(path))  # OUTPOST_SIGNING_SECRET unset
    assert done.returncode == 0, done.stderr
    assert "note: receiver.secrets: not set here; serve and worker need it" in done.stdout.splitlines()
    served = fulfiller("serve", "--config", str(path))
    assert served.returncode == 2
    assert "  receiver.secrets.0: environment variable OUTPOST_SIGNING_SECRET is not set" in served.stderr


def test_check_config_and_serve_refuse_a_secret_the_mode_cannot_use(tmp_path: Path) -> None:
    path = tmp_path / "standard.yaml"
    path.write_text(MINIMAL.replace("receiver:\n", "receiver:\n  mode: standard\n"))
    for command in ("check-config", "serve"):
        done = fulfiller(command, "--config", str(path))
        assert done.returncode == 2, command
        assert "  receiver.secrets.0: a Standard Webhooks secret is not valid base64" in done.stderr, command
        assert "Traceback" not in done.stderr


def unusable_states(tmp: Path) -> dict[str, tuple[str, str]]:
    """Each state URL serve could not open, with the words the refusal says it in."""
    (tmp / "folder.db").mkdir()
    (tmp / "notes.txt").write_text("not a database")
    return {
        "a directory": (f"sqlite:///{tmp}/folder.db", f"{tmp}/folder.db is a directory"),
        "not SQLite": (f"sqlite:///{tmp}/notes.txt", f"{tmp}/notes.txt is not a SQLite database"),
        "under a file": (f"sqlite:///{tmp}/notes.txt/sub/f.db", f"{tmp}/notes.txt is not a directory"),
        "no path": ("sqlite:///", "sqlite URL needs a path"),
        "bad option": ("sqlite:///f.db?busy_timeout_ms=soon", "not a usable state URL"),
        "bad postgres URL": ("postgresql://u:hunter2@db/x?nonsense=1", 'invalid URI query parameter: "nonsense"'),
    }


@pytest.mark.parametrize("problem", ["a directory", "not SQLite", "under a file", "no path", "bad option",
                                     "bad postgres URL"])
def test_check_config_and_serve_refuse_a_state_they_cannot_open(tmp_path: Path, problem: str) -> None:
    url, says = unusable_states(tmp_path)[problem]
    path = tmp_path / "state.yaml"
    path.write_text(MINIMAL + f'state: "{url}"\n')
    for command in ("check-config", "serve"):
        done = fulfiller(command, "--config", str(path))
        assert done.returncode == 2, (command, done.stderr)
        [line] = [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("state:")]
        assert says in line, (command, line)
        assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "not a database"  # looked at, never written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_check_config_refuses_a_state_folder_it_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    path = tmp_path / "state.yaml"
    path.write_text(MINIMAL + f"state: sqlite:///{locked}/new/f.db\n")
    done = check_config("--config", str(path))
    assert done.returncode == 2
    assert f"state: cannot create files in {locked}" in done.stderr


def test_check_config_takes_a_state_folder_serve_would_create(tmp_path: Path) -> None:
    path = tmp_path / "state.yaml"
    path.write_text(MINIMAL + f"state: sqlite:///{tmp_path}/data/fulfiller/f.db\n")
    done = check_config("--config", str(path))
    assert done.returncode == 0, done.stderr
    assert f"note: state: {tmp_path}/data/fulfiller does not exist yet; serve creates it" in done.stdout
    assert not (tmp_path / "data").exists()


def test_check_config_probe_lists_each_catalog_root_and_names_the_ones_it_cannot(tmp_path: Path) -> None:
    (tmp_path / "masters" / "HRT-1").mkdir(parents=True)
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "probe.yaml"
    path.write_text(textwrap.dedent(f"""
        state: sqlite:///{tmp_path}/f.db
        catalogs:
          here: {{type: local, root: "{tmp_path}/masters"}}
          unmounted: {{type: local, root: "{tmp_path}/mnt/masters"}}
          not-a-folder: {{type: local, root: "{tmp_path}/a-file"}}
          no-key: {{type: drive, root_folder_id: abc, credentials_file: "{tmp_path}/absent-key.json"}}
        routes: [{{catalog: here}}]
        """))
    done = check_config("--config", str(path), "--probe")
    assert done.returncode == 2
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert f"here: ok: local folder {tmp_path}/masters: 1 items" in lines
    assert f"unmounted: FAILED: catalog unmounted: cannot list root folder {tmp_path}/mnt/masters: " \
           "No such file or directory" in lines
    assert f"not-a-folder: FAILED: catalog not-a-folder: cannot list root folder {tmp_path}/a-file: " \
           "Not a directory" in lines
    assert any(line.startswith("no-key: FAILED: drive: no usable credentials") for line in lines)  # not built
    assert "Traceback" not in done.stderr
    path.write_text(path.read_text().replace("mnt/masters", "masters").replace("a-file", "masters")
                    .replace("no-key:", "# no-key:"))
    assert check_config("--config", str(path), "--probe").returncode == 0


@pytest.mark.parametrize(("tolerance", "ok"), [(0, True), (1, True), (86_400, True), (-1, False)])
def test_timestamp_tolerance_is_any_integer_from_0(tolerance: int, ok: bool) -> None:
    text = MINIMAL.replace("receiver:", f"receiver:\n  timestamp_tolerance_s: {tolerance}", 1)
    if ok:
        assert parse_config(text, env={}).receiver.timestamp_tolerance_s == tolerance
        return
    with pytest.raises(ConfigError) as info:
        parse_config(text, env={})
    assert info.value.errors[0][0] == "receiver.timestamp_tolerance_s"


def test_check_config_prints_the_header_a_delivery_carries_and_refuses_an_unsupported_template(
        tmp_path: Path) -> None:
    path = tmp_path / "signing.yaml"
    minimal = f"state: sqlite:///{tmp_path / 'state.db'}\n" + MINIMAL
    timestamped = textwrap.indent(textwrap.dedent("""\
        header_prefix: x-acme-
        signature_content_template: "{{.Timestamp.Unix}}.{{.Body}}"
        signature_header_template: 't={{.Timestamp.Unix}},v0={{.Signatures | join ","}}'
        """), "  ")
    path.write_text(minimal.replace("receiver:\n", "receiver:\n" + timestamped, 1))
    done = check_config("--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "a delivery carries: x-acme-signature: t=<unix>,v0=<hex>[,<hex>]" in done.stdout.splitlines()
    path.write_text(minimal.replace("receiver:\n", 'receiver:\n  signature_content_template: "{{.Foo}}"\n', 1))
    refused = check_config("--config", str(path))
    assert refused.returncode == 2
    assert '  receiver.signature_content_template: unsupported template part "{{.Foo}}"' in refused.stderr
