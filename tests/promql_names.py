"""Metric names in PromQL expressions, and in a /metrics scrape: for the dashboard and alert tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "engage.json"
ALERTS = MONITORING / "prometheus" / "alerts.yml"

#: Series Prometheus makes itself for every target; no exporter exports them.
PROMETHEUS_OWN = {"up"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (functions, keywords, labels and durations left out).

    >>> sorted(metric_names('sum by (le, step) (rate(engage_batch_seconds_bucket{step="x"}[5m]))'
    ...                     ' / on() group_left sum(up{job="engage"}) or vector(0)'))
    ['engage_batch_seconds_bucket', 'up']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)               # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)                          # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                         # range selectors
    # Grouping and matching modifiers with their label lists: gone, so that
    # `sum by (le) (x)` reads as the call `sum (x)`.
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        if name.lower() in _KEYWORDS:
            continue
        rest = text[match.end():].lstrip()
        if rest.startswith("("):                                    # a function or aggregation
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue                                                # the unit of a number (5m, 1e-9)
        names.add(name)
    return names


def dashboard_panels(path: Path = DASHBOARD) -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows' nested panels included, rows themselves left out."""
    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            if panel.get("type") == "row":
                yield from walk(panel.get("panels", []))
            else:
                yield panel
    return list(walk(json.loads(path.read_text())["panels"]))


def dashboard_metrics(path: Path = DASHBOARD) -> dict[str, set[str]]:
    """Metric name -> titles of the panels that query it."""
    out: dict[str, set[str]] = {}
    for panel in dashboard_panels(path):
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                out.setdefault(name, set()).add(panel["title"])
    return out


def alert_metrics(path: Path = ALERTS) -> dict[str, set[str]]:
    """Metric name -> alerts that read it."""
    out: dict[str, set[str]] = {}
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                out.setdefault(name, set()).add(rule.get("alert") or rule.get("record", "?"))
    return out


def exported_names(scrape: str) -> tuple[set[str], set[str]]:
    """(names with at least one sample, names declared by a TYPE line) in a /metrics text.

    A histogram family declares its ``_bucket``, ``_sum`` and ``_count`` series.
    """
    sampled, declared = set(), set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            declared.add(name)
            if kind.strip() == "histogram":
                declared.update(name + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            sampled.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return sampled, declared | sampled
