"""The ops files under monitoring/: Prometheus config and alerts (promtool), the Grafana dashboard.

Which metric names they use is checked against a live engine's /metrics in
tests/integration/test_monitoring.py; here, their own validity.
"""

from __future__ import annotations

import doctest
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import engage.monitoring.metrics  # noqa: F401 - registers every engine metric
import promql_names
from promql_names import ALERTS, DASHBOARD, MONITORING, PROMETHEUS_OWN, dashboard_panels

PROMETHEUS_DIR = MONITORING / "prometheus"


def promtool() -> str:
    """The promtool binary; the test skips, saying how to get it, when there is none."""
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: it ships in Debian's `prometheus` package "
                    "(scripts/bootstrap.sh installs it when run as root with apt-get)")
    return found


def run_promtool(*args: str) -> str:
    out = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120,
                         cwd=PROMETHEUS_DIR)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_alert_rules_pass_promtool_check() -> None:
    assert "SUCCESS: 6 rules found" in run_promtool("check", "rules", ALERTS.name)


def test_prometheus_config_passes_promtool_check() -> None:
    assert "is valid prometheus config file syntax" in run_promtool("check", "config",
                                                                    "prometheus.yml")


def test_each_alert_fires_on_its_series_and_not_on_healthy_ones() -> None:
    """alerts_test.yml: promtool's unit tests of every alert, firing and quiet."""
    tested = {t["alertname"] for case in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml")
                                                        .read_text())["tests"]
              for t in case["alert_rule_test"]}
    alerts = {r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert tested == alerts
    assert {"EngageDown", "EngageDeadLetterRateHigh", "EngageEventTimeLagHigh",
            "EngageNoActionsWhileEventsFlow", "EngageRedisErrors"} <= alerts
    assert "SUCCESS" in run_promtool("test", "rules", "alerts_test.yml")


def test_the_scrape_config_targets_the_engine_and_loads_the_alerts() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "engage"            # the alerts select on job="engage"
    assert job["static_configs"][0]["targets"] == ["engine:9108"]


def test_dashboard_panels_are_well_formed_and_use_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "datasources"
                                  / "prometheus.yml").read_text())["datasources"]
    uid = datasources[0]["uid"]
    panels = dashboard_panels()
    assert len(panels) >= 20
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            # Every query reads at least one metric: none is a constant.
            assert promql_names.metric_names(target["expr"]), (panel["title"], target["expr"])


def test_every_dashboard_and_alert_metric_is_one_the_engine_defines() -> None:
    """Quick static check; the live scrape in test_monitoring.py is the proof."""
    defined = set()
    for family in REGISTRY.collect():
        defined.add(family.name)
        for sample in family.samples:
            defined.add(sample.name)
        if family.type == "histogram":
            defined.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        if family.type == "counter":
            defined.add(family.name + "_total")
    used = set(promql_names.dashboard_metrics()) | set(promql_names.alert_metrics())
    assert used - PROMETHEUS_OWN - defined == set()


def test_metric_name_extraction() -> None:
    assert doctest.testmod(promql_names).failed == 0
    assert promql_names.metric_names(
        '(sum(rate(a_total[30m])) or on() vector(0)) == 0 and on() max(b_seconds) > 9e2') \
        == {"a_total", "b_seconds"}


def test_dashboard_file_is_where_compose_provisions_it() -> None:
    provider = yaml.safe_load((MONITORING / "grafana" / "provisioning" / "dashboards"
                               / "engage.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARD.parent == MONITORING / "grafana" / "dashboards"
    assert Path(DASHBOARD).exists()
