"""The deployment examples in ``config/deploy/``: they load, they agree with each other and with the code.

An alert on a metric the fulfiller does not export never fires; a compose stop period shorter than the
worker's shutdown grace cuts uploads short; a Caddyfile that does not parse serves nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from fulfiller.config import WorkerConfig, parse_config
from fulfiller.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[1] / "config" / "deploy"
ENV = {"OUTPOST_SIGNING_SECRET": "whsec_deploy-example-secret-0123", "FULFILLER_ADMIN_TOKEN": "a" * 32,
       "POSTGRES_PASSWORD": "example"}


def exported_metrics() -> set[str]:
    """Every sample name a fresh fulfiller's /metrics can show (histograms' _bucket/_sum/_count included)."""
    text = generate_latest(Metrics().registry).decode()
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) (\S+)", text, re.M)} | {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load((DEPLOY / "alerts.yaml").read_text())["groups"] for rule in group["rules"]]


def test_every_alert_names_only_metrics_the_fulfiller_exports() -> None:
    exported = exported_metrics()
    for rule in alert_rules():
        used = set(re.findall(r"\bfulfiller_[a-z_]+", rule["expr"]))
        assert used or rule["expr"].startswith('up{job="fulfiller"}'), rule["alert"]
        # A counter's samples end in _total; the TYPE line names it without.
        assert {name for name in used if name not in exported and name.removesuffix("_total") not in exported} == set()


def test_every_alert_pages_with_a_summary_and_a_wait() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"FulfillerDown", "FulfillerStoreUnavailable", "FulfillerJobsFailing",
                                          "FulfillerQueueNearDeadline", "FulfillerRefusedDeliveriesSpiking"}
    for rule in rules:
        assert rule["labels"]["severity"] == "page" and rule["annotations"]["summary"] and rule["for"]


def test_the_queue_alert_fires_well_before_the_one_hour_deadline() -> None:
    [rule] = [r for r in alert_rules() if r["alert"] == "FulfillerQueueNearDeadline"]
    threshold = float(rule["expr"].rsplit(">", 1)[1])
    assert threshold + 5 * 60 < 3600  # plus its `for:` wait


@pytest.mark.parametrize("name", ["fulfiller.yaml", "fulfiller.fleet.yaml"])
def test_the_example_configs_load(name: str) -> None:
    config = parse_config((DEPLOY / name).read_text(), ENV)
    assert config.server.host == "127.0.0.1" and config.server.forwarded_allow_ips == "127.0.0.1"


def _seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()  # type: ignore[union-attr]
    return float(value) * (60 if unit == "m" else 1)


@pytest.mark.parametrize("name", ["compose.yaml", "compose.fleet.yaml"])
def test_compose_gives_workers_more_than_the_shutdown_grace_and_stays_on_the_host_network(name: str) -> None:
    services = yaml.safe_load((DEPLOY / name).read_text())["services"]
    grace = WorkerConfig().shutdown_grace_s
    for service_name, service in services.items():
        assert service["network_mode"] == "host", service_name
        if "fulfiller" in service.get("image", ""):
            assert service["read_only"] is True and "/tmp" in service["tmpfs"]
            if service.get("command", ["fulfiller", "serve"])[1:] != ["serve", "--no-worker"]:
                assert _seconds(service["stop_grace_period"]) > grace, service_name
            mounts = [v for v in service.get("volumes", []) if isinstance(v, str)]
            assert any(m.split(":")[1] == "/etc/fulfiller/config.yaml" for m in mounts), service_name


def test_the_caddyfile_proxies_to_the_fulfiller_and_keeps_metrics_and_admin_inside() -> None:
    done = subprocess.run(["caddy", "adapt", "--config", str(DEPLOY / "Caddyfile"), "--adapter", "caddyfile"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "FULFILLER_DOMAIN": "fulfiller.example.com"})
    assert done.returncode == 0, done.stderr
    [server] = json.loads(done.stdout)["apps"]["http"]["servers"].values()
    [route] = server["routes"]
    assert route["match"] == [{"host": ["fulfiller.example.com"]}]
    inside, proxy = route["handle"][0]["routes"]
    assert inside["match"] == [{"path": ["/metrics", "/admin", "/admin/*"]}]
    assert inside["handle"] == [{"handler": "static_response", "status_code": 404}]
    port = parse_config((DEPLOY / "fulfiller.yaml").read_text(), ENV).server.port
    assert proxy["handle"] == [{"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{port}"}]}]
