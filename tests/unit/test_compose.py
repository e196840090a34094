"""docker-compose.yml, checked without a Docker engine: services, wiring, ports, mounts.

`docker compose up --build` cannot run here, so each thing that would make it
fail or misbehave at start-up is checked instead: a mounted file that is not
in the repository, a service waited on that has no healthcheck, a scrape
target on another port than the engine's metrics, a command the engine's
CLI does not accept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from engage.cli import build_parser
from engage.config import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def mounts(service: str) -> list[tuple[str, str]]:
    """(source, target) of each volume entry of a service (short syntax)."""
    out = []
    for entry in SERVICES[service].get("volumes", []):
        source, target = entry.split(":")[:2]
        out.append((source, target))
    return out


def published(service: str) -> dict[int, int]:
    """Container port -> host port."""
    out = {}
    for entry in SERVICES[service].get("ports", []):
        host, container = str(entry).split(":")[-2:]
        out[int(container)] = int(host)
    return out


def test_the_stack_has_every_part() -> None:
    assert set(SERVICES) == {"kafka", "redis", "engine", "simulator", "prometheus", "grafana"}


def test_kafka_runs_in_kraft_mode_and_advertises_what_the_engine_uses() -> None:
    kafka = env("kafka")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in kafka)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    advertised = kafka["KAFKA_ADVERTISED_LISTENERS"].split("://", 1)[1]
    assert env("engine")["ENGAGE_KAFKA_BOOTSTRAP"] == advertised
    assert env("simulator")["ENGAGE_KAFKA_BOOTSTRAP"] == advertised


def test_redis_persists_to_a_volume_and_the_engine_points_at_it() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert ("redis-data", "/data") in mounts("redis")
    assert env("engine")["ENGAGE_REDIS_URL"].startswith("redis://redis:6379/")


def test_the_engine_is_built_here_and_its_settings_load() -> None:
    engine = SERVICES["engine"]
    assert engine["build"] == "." and (ROOT / "Dockerfile").exists()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["engage"]' in dockerfile
    settings = Settings.load({}, env("engine"))          # the engine would start with these
    assert settings.recovery_dir and any(t.startswith(settings.recovery_dir.rsplit("/", 1)[0])
                                         for _, t in mounts("engine"))
    port = settings.metrics_port
    assert f"EXPOSE {port}" in dockerfile
    assert published("engine") == {port: port}
    # Its healthcheck asks /readyz on that port.
    check = " ".join(engine["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/readyz" in check


@pytest.mark.parametrize("service", ["engine", "simulator"])
def test_commands_are_ones_the_cli_accepts(service: str) -> None:
    args = build_parser().parse_args(SERVICES[service]["command"])
    assert args.command == {"engine": "run", "simulator": "simulate"}[service]


def test_prometheus_scrapes_the_engine_metrics_port_and_loads_the_alerts() -> None:
    (source, target), = [m for m in mounts("prometheus") if m[0].startswith("./")]
    config_arg = next(a for a in SERVICES["prometheus"]["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert config_path.startswith(target + "/")
    config_file = ROOT / source / config_path[len(target) + 1:]
    config = yaml.safe_load(config_file.read_text())
    for rule_file in config["rule_files"]:
        assert (config_file.parent / rule_file).exists(), rule_file
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]]
    assert targets == [f"engine:{env('engine')['ENGAGE_METRICS_PORT']}"]


def test_grafana_gets_the_datasource_and_the_dashboard() -> None:
    by_target = {t: s for s, t in mounts("grafana")}
    provisioning = ROOT / by_target["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    prometheus_port = next(iter(published("prometheus")))
    assert datasource["datasources"][0]["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load((provisioning / "dashboards" / "engage.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert (ROOT / by_target[dashboards_dir] / "engage.json").exists()
    home = env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/engage.json"


def test_every_mounted_host_path_exists_and_every_named_volume_is_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name in SERVICES:
        for source, _ in mounts(name):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, not in the repository"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"


def test_dependencies_exist_and_waited_on_services_have_healthchecks() -> None:
    for name, service in SERVICES.items():
        for dep, how in (service.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep}'s health"
    # The engine waits for both stores; the simulator for a ready engine (topics made).
    assert set(SERVICES["engine"]["depends_on"]) == {"kafka", "redis"}
    assert "engine" in SERVICES["simulator"]["depends_on"]


def test_host_ports_are_distinct_and_images_are_pinned() -> None:
    ports = [host for name in SERVICES for host in published(name).values()]
    assert len(ports) == len(set(ports))
    for name, service in SERVICES.items():
        if "image" in service and "build" not in service:
            assert re.search(r":[\w.]+$", service["image"]) and not service["image"].endswith(
                ":latest"), f"{name}: pin the image version"
