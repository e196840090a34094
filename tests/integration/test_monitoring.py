"""The dashboard, the alerts and the README's metric list against a live engine's /metrics.

`engage run` runs as a child process against the real broker and Redis, takes
events stamped with the wall clock, sends an action and suppresses another;
then one scrape of its /metrics must hold every metric name that a Grafana
panel, a Prometheus alert or the README names.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from engine_process import EngineProcess, until
from helpers import doc, login, view
from promql_names import PROMETHEUS_OWN, alert_metrics, dashboard_metrics, exported_names
from stack_helpers import produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
OPS_RULES = str(ROOT / "tests" / "rules" / "ops_live.yaml")

#: Labelled metrics whose events this run does not cause, so they are declared
#: (TYPE line) but have no sample yet. Everything else must have samples.
NOT_EXERCISED = {
    "engage_redis_retries_total",       # Redis stays up (tests/integration/test_faults.py)
    "engage_actions_deferred_total",    # no quiet hours, no arbitration
    "engage_rule_eval_errors_total",    # every condition decides
    "engage_rule_reloads_total",        # rule files do not change (test_rules_live.py)
    "engage_erasures_total",            # nobody is forgotten (test_forget.py)
    "engage_model_auc",                 # no label comes due in minutes of event time
    "engage_model_baseline_auc",        # (the models' AUC: test_models.py)
    "engage_attribution_skipped_total",  # every order is countable (test_attribution_step.py)
}


def readme_metrics() -> set[str]:
    """The metric names listed in the README's Metrics section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(engage_[a-z0-9_]+)", section))


def test_every_dashboard_alert_and_documented_metric_is_exported_by_a_live_engine(stack) -> None:
    now = int(time.time() * 1000)
    with EngineProcess({**stack.env(), "ENGAGE_RULES": OPS_RULES, "ENGAGE_LATENESS": "1s"}) as engine:
        until(lambda: engine.get("/readyz")[0] == 200 or not engine.alive(), "readiness")
        status, body = engine.get("/readyz")
        assert status == 200, engine.log()[-3000:]
        assert orjson.loads(body)["checks"] == {"redis": "ok", "kafka": "ok", "rules": "ok"}
        produce(stack, [
            doc("search", now - 30_000, "c-1", query="sofa"),            # answered
            doc("search", now - 29_000, "c-1", query="lamp"),            # capped: 1 a day
            doc("order_paid", now - 25_000, "c-1", order_id="o-1", amount=80.0,
                coupon="SEARCH5"),                                       # credited, redeemed
            doc("order_refunded", now - 24_000, "c-1", order_id="o-1", amount=80.0),  # reversed
            view(now - 28_000, anon="d-1"), login(now - 27_000, "c-2", "d-1"),   # a link
            b"{not json",                                                # a dead letter
            *[view(now - 1_000 + i, f"clock-{i}") for i in range(12)],   # time passes
        ])
        until(lambda: engine.sample('engage_actions_suppressed_total{reason="cap",'
                                    'rule_id="searcher"}') >= 1, "the capped decision")
        until(lambda: engine.sample("engage_action_latency_seconds_count") >= 1, "the latency")
        until(lambda: engine.sample("engage_conversions_reversed_total{channel=\"email\","
                                    "rule_id=\"searcher\",variant=\"none\"}") >= 1,
              "the refunded conversion")
        until(lambda: 'engage_consumer_lag_messages{partition="2"}' in engine.metrics(),
              "a consumer-lag reading")
        scrape = engine.metrics()
    assert engine.returncode == 0, engine.log()[-3000:]
    sampled, declared = exported_names(scrape)

    wanted = {**dashboard_metrics(), **alert_metrics()}
    missing = {name: sorted(where) for name, where in wanted.items()
               if name not in declared and name not in PROMETHEUS_OWN}
    assert not missing, f"panels or alerts query metrics the engine does not export: {missing}"
    silent = {name for name in wanted if name not in sampled} - PROMETHEUS_OWN
    silent = {n for n in silent if re.sub(r"_(bucket|sum|count)$", "", n) not in NOT_EXERCISED}
    assert not silent, f"exported but without a sample in a run that should give one: {silent}"

    # The end-to-end latency is the wall clock minus the search's event time
    # (about 30 s, plus the engine's own delay), not anything of the replayed kind.
    count = engine_sample(scrape, "engage_action_latency_seconds_count")
    mean = engine_sample(scrape, "engage_action_latency_seconds_sum") / count
    assert count == 1 and 29 <= mean <= 120, (count, mean)

    # The README lists exactly the engine's metrics.
    # (prometheus_client adds a `_created` timestamp beside each counter and histogram.)
    families = {line.split()[2] for line in scrape.splitlines()
                if line.startswith("# TYPE engage_") and not line.split()[2].endswith("_created")}
    documented = readme_metrics()
    assert documented - families == set(), "documented in the README but not exported"
    assert families - documented == set(), ("exported but not in the README's Metrics section: "
                                            "add them there")


def engine_sample(scrape: str, name: str) -> float:
    """One unlabelled sample's value from a scrape."""
    for line in scrape.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the scrape")
